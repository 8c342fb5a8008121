"""Z-Image / HunyuanVideo 1.5 QKV conversion against musubi-tuner's own converter outputs and the maths."""

from __future__ import annotations

import pytest
import torch

from convert_helpers import (
    FIXTURES,
    applied,
    assert_same_effect,
    hv15_shapes,
    loha,
    lokr,
    lora,
    module,
    source_of,
    zimage_shapes,
)
from hadakron.common.tensor_files import load_tensor_file
from hadakron.converters import HV15_SPEC, ZIMAGE_SPEC, QkvOptions, convert_qkv, read_input
from hadakron.converters.hashes import safetensors_hashes
from hadakron.converters.io import LoadedAdapter

ZQ = "lora_unet_layers_0_attention_"
QKV = ZQ + "qkv"


def _loaded(tensors: dict, metadata: dict | None = None) -> LoadedAdapter:
    source = source_of(tensors, metadata)
    return LoadedAdapter("mem", dict(tensors), dict(metadata or {}), source.parsed, source.convention)


def _fixture(name: str) -> LoadedAdapter:
    return read_input(FIXTURES / f"{name}.safetensors")


def _stacked_delta(loaded: LoadedAdapter) -> torch.Tensor:
    """Reference: vstack of the unfused q/k/v ΔW·γ (fp64, textbook formulas via the loader)."""
    got = applied(loaded.tensors, loaded.metadata, zimage_shapes(), "z_image")
    return got["diffusion_model.layers.0.attention.qkv.weight"]


def _lora_delta(tensors: dict, name: str = QKV) -> torch.Tensor:
    up, down = tensors[name + ".lora_up.weight"].double(), tensors[name + ".lora_down.weight"].double()
    return float(tensors[name + ".alpha"]) / down.shape[0] * (up @ down)


@pytest.mark.parametrize("name", ["zimage_lora_r4_a2", "zimage_loha_r4_a2"])
def test_lora_loha_equal_musubi_bit_for_bit(name):
    ours, meta, report = convert_qkv(_fixture(name), ZIMAGE_SPEC, QkvOptions())
    theirs, their_meta = load_tensor_file(FIXTURES / f"{name}.comfy.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert meta["sshs_model_hash"] == their_meta["sshs_model_hash"]
    assert {k: v for k, v in meta.items() if not k.startswith("hadakron.")} == their_meta
    assert report.fused and not report.fits


@pytest.mark.parametrize("name", ["zimage_lora_r4_a2", "zimage_loha_r4_a2"])
def test_fused_file_applies_like_the_split_original(name):
    loaded = _fixture(name)
    ours, meta, _ = convert_qkv(loaded, ZIMAGE_SPEC, QkvOptions())
    shapes = zimage_shapes()
    want = applied(loaded.tensors, loaded.metadata, shapes, "z_image")
    assert_same_effect(applied(ours, meta, shapes, "z_image"), want)


def _dense_eckart_young(delta: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(delta)
    return float(s[rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())


@pytest.mark.parametrize("name", ["zimage_lokr_r4_a2", "zimage_lokr_f4_r2_a1"])
def test_lokr_rank8_no_worse_than_musubi_and_optimal(name):
    loaded = _fixture(name)
    reference = _stacked_delta(loaded)
    ours, _, report = convert_qkv(loaded, ZIMAGE_SPEC, QkvOptions(lokr_rank=8))
    theirs, _ = load_tensor_file(FIXTURES / f"{name}.comfy_rank8.safetensors")
    our_err = float((_lora_delta(ours) - reference).norm() / reference.norm())
    their_err = float((_lora_delta(theirs) - reference).norm() / reference.norm())
    bound = _dense_eckart_young(reference, 8)
    assert our_err <= their_err + 1e-6
    assert our_err == pytest.approx(bound, rel=1e-6, abs=1e-9)
    (fit,) = report.fits
    assert fit.rank == 8 and fit.rel_error == pytest.approx(bound, rel=1e-6)
    assert fit.kept_energy == pytest.approx(1 - bound**2, rel=1e-6)
    # hybrid output: LoRA on qkv, LoKr kept elsewhere
    assert ours[QKV + ".alpha"].item() == 8.0 and ZQ + "out.lokr_w1" in ours


def test_lokr_auto_rank_is_exact_like_musubi():
    loaded = _fixture("zimage_lokr_f4_r2_a1")
    ours, _, report = convert_qkv(loaded, ZIMAGE_SPEC, QkvOptions())
    theirs, _ = load_tensor_file(FIXTURES / "zimage_lokr_f4_r2_a1.comfy.safetensors")
    reference = _stacked_delta(loaded)
    (fit,) = report.fits
    assert fit.exact_rank == 24 and fit.rank <= 24 and fit.kept_energy >= 0.9999
    assert float((_lora_delta(ours) - reference).norm() / reference.norm()) <= 0.01
    torch.testing.assert_close(_lora_delta(theirs), reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


def test_energy_rule_picks_the_smallest_rank():
    loaded = _fixture("zimage_lokr_r4_a2")
    _, _, report = convert_qkv(loaded, ZIMAGE_SPEC, QkvOptions())
    s = torch.linalg.svdvals(_stacked_delta(loaded))
    cum = (s**2).cumsum(0) / (s**2).sum()
    expected = int((cum < 0.9999).sum()) + 1
    (fit,) = report.fits
    assert fit.rank == expected  # musubi kept 174 on this file (PROVENANCE.md, not_kept)
    assert fit.rank == 174


def test_reverse_reproduces_musubi_reverse_and_the_original():
    original, _ = load_tensor_file(FIXTURES / "zimage_lora_r4_a2.safetensors")
    musubi_reverse, _ = load_tensor_file(FIXTURES / "zimage_lora_r4_a2.comfy.reverse.safetensors")
    ours, _, report = convert_qkv(_fixture("zimage_lora_r4_a2.comfy"), ZIMAGE_SPEC, QkvOptions(reverse=True))
    assert sorted(ours) == sorted(original) == sorted(musubi_reverse)
    for key in original:
        assert torch.equal(ours[key], original[key]), key
    assert report.split


def test_loha_reverse_round_trip_is_exact():
    original = _fixture("zimage_loha_r4_a2")
    fused, meta, _ = convert_qkv(original, ZIMAGE_SPEC, QkvOptions())
    back, _, _ = convert_qkv(_loaded(fused, meta), ZIMAGE_SPEC, QkvOptions(reverse=True))
    assert sorted(back) == sorted(original.tensors)
    for key, tensor in original.tensors.items():
        assert torch.equal(back[key], tensor), key


def test_reverse_of_dense_lora_keeps_down_whole():
    gen = torch.Generator().manual_seed(3)
    tensors = module(QKV, lora(768, 256, 6, gen, alpha=3.0))
    back, meta, _ = convert_qkv(_loaded(tensors), ZIMAGE_SPEC, QkvOptions(reverse=True))
    for part in "qkv":
        name = f"{ZQ}to_{part}"
        assert back[name + ".lora_down.weight"].shape == (6, 256)  # rank never split
        assert back[name + ".alpha"].item() == 3.0
    shapes = zimage_shapes()
    assert_same_effect(applied(back, meta, shapes, "z_image"), applied(tensors, {}, shapes, "z_image"))


def test_reverse_lokr_when_w1_rows_divide_by_three():
    gen = torch.Generator().manual_seed(4)
    tensors = module(QKV, lokr((48, 16), (16, 16), 4, gen, alpha=2.0))
    back, meta, report = convert_qkv(_loaded(tensors), ZIMAGE_SPEC, QkvOptions(reverse=True))
    assert back[ZQ + "to_q.lokr_w1"].shape == (16, 16) and not report.fits
    shapes = zimage_shapes()
    assert_same_effect(applied(back, meta, shapes, "z_image"), applied(tensors, {}, shapes, "z_image"))


def test_reverse_lokr_otherwise_becomes_lora():
    gen = torch.Generator().manual_seed(5)
    tensors = module(QKV, lokr((16, 16), (48, 16), 2, gen, alpha=1.0))
    back, meta, report = convert_qkv(_loaded(tensors), ZIMAGE_SPEC, QkvOptions(reverse=True))
    assert ZQ + "to_k.lora_up.weight" in back and len(report.fits) == 3
    shapes = zimage_shapes()
    assert_same_effect(applied(back, meta, shapes, "z_image"), applied(tensors, {}, shapes, "z_image"), rtol=1e-2)


def test_unequal_alphas_and_missing_part_fuse_exactly():
    gen = torch.Generator().manual_seed(6)
    tensors = {
        **module(ZQ + "to_q", lora(256, 256, 4, gen, alpha=1.0)),
        **module(ZQ + "to_v", lora(256, 256, 8, gen, alpha=16.0)),
    }
    fused, meta, report = convert_qkv(_loaded(tensors), ZIMAGE_SPEC, QkvOptions())
    assert fused[QKV + ".alpha"].item() == 12.0  # scales folded into the up blocks, alpha = total rank
    assert any("no k module" in n for n in report.notes)
    shapes = zimage_shapes()
    assert_same_effect(applied(fused, meta, shapes, "z_image"), applied(tensors, {}, shapes, "z_image"))


def test_mixed_algorithms_go_to_the_optimal_lora():
    gen = torch.Generator().manual_seed(7)
    tensors = {
        **module(ZQ + "to_q", lora(256, 256, 4, gen, alpha=2.0)),
        **module(ZQ + "to_k", loha(256, 256, 2, gen, alpha=2.0)),
        **module(ZQ + "to_v", lokr((16, 16), (16, 16), 2, gen, alpha=1.0)),
    }
    loaded = _loaded(tensors)
    reference = _stacked_delta(loaded)
    fused, _, report = convert_qkv(loaded, ZIMAGE_SPEC, QkvOptions(lokr_rank=10))
    err = float((_lora_delta(fused) - reference).norm() / reference.norm())
    assert err == pytest.approx(_dense_eckart_young(reference, 10), rel=1e-6)
    assert report.fits[0].rel_error == pytest.approx(err, rel=1e-6)


def test_lossless_keeps_lokr_split_and_exact():
    loaded = _fixture("zimage_lokr_r4_a2")
    out, meta, report = convert_qkv(loaded, ZIMAGE_SPEC, QkvOptions(lossless=True))
    assert "diffusion_model.layers.0.attention.to_q.lokr_w1" in out and not report.fits
    assert ZQ + "out.lokr_w1" in out
    shapes = zimage_shapes()
    want = applied(loaded.tensors, loaded.metadata, shapes, "z_image")
    assert_same_effect(applied(out, meta, shapes, "z_image"), want)


def test_musubi_hash_is_reproduced():
    tensors, metadata = load_tensor_file(FIXTURES / "zimage_lokr_r4_a2.comfy_rank8.safetensors")
    assert safetensors_hashes(tensors, metadata) == (metadata["sshs_model_hash"], metadata["sshs_legacy_hash"])


# ----------------------------------------------------------------------------------------- HV 1.5

HV = "lora_unet_double_blocks_0_"


def _hv15_file(gen) -> dict:
    tensors = {}
    for part in "qkv":
        tensors.update(module(f"{HV}img_attn_{part}", lora(128, 128, 4, gen, alpha=2.0)))
        tensors.update(module(f"{HV}txt_attn_{part}", loha(128, 128, 2, gen, alpha=1.0)))
    tensors.update(module(HV + "img_mlp_fc1", lokr((16, 8), (32, 16), 2, gen, alpha=1.0)))
    tensors.update(module(HV + "txt_mod_linear", lora(768, 128, 4, gen, alpha=4.0)))
    return tensors


def test_hv15_renames_and_fuses_lora_loha_exactly():
    tensors = _hv15_file(torch.Generator().manual_seed(8))
    out, meta, report = convert_qkv(_loaded(tensors), HV15_SPEC, QkvOptions())
    assert {HV + "img_attn_qkv.lora_up.weight", HV + "txt_attn_qkv.hada_w1_a", HV + "img_mlp_0.lokr_w1"} <= set(out)
    assert HV + "txt_mod_lin.lora_up.weight" in out and len(report.fused) == 2
    shapes = hv15_shapes()
    family = "hunyuan_video_1_5"
    assert_same_effect(applied(out, meta, shapes, family), applied(tensors, {}, shapes, family))
    back, back_meta, _ = convert_qkv(_loaded(out, meta), HV15_SPEC, QkvOptions(reverse=True))
    for key, tensor in tensors.items():
        assert torch.equal(back[key], tensor), key


def test_hv15_fuses_lokr_too():
    gen = torch.Generator().manual_seed(9)
    tensors = {}
    for part in "qkv":
        tensors.update(module(f"{HV}img_attn_{part}", lokr((8, 8), (16, 16), 2, gen, alpha=1.0)))
    _, _, auto = convert_qkv(_loaded(tensors), HV15_SPEC, QkvOptions())
    assert auto.fits[0].exact_rank == 3 * 8 * 2 and auto.fits[0].kept_energy >= 0.9999
    out, meta, report = convert_qkv(_loaded(tensors), HV15_SPEC, QkvOptions(lokr_rank=48))
    (fit,) = report.fits
    assert fit.rank == 48 and fit.rel_error < 1e-6
    shapes = hv15_shapes()
    got = applied(out, meta, shapes, "hunyuan_video_1_5")
    want = applied(tensors, {}, shapes, "hunyuan_video_1_5")
    assert_same_effect(got, want, rtol=1e-5)


@pytest.mark.parametrize("options", [QkvOptions(lokr_rank=8), QkvOptions()])
def test_torch_eigensolver_fallback_gives_the_same_truncation(monkeypatch, options):
    from hadakron.converters import kronfuse

    loaded = _fixture("zimage_lokr_r4_a2")
    _, _, with_scipy = convert_qkv(loaded, ZIMAGE_SPEC, options)
    monkeypatch.setattr(kronfuse, "_scipy_linalg", lambda: None)
    _, _, with_torch = convert_qkv(loaded, ZIMAGE_SPEC, options)
    (a,), (b,) = with_scipy.fits, with_torch.fits
    assert a.rank == b.rank and a.rel_error == pytest.approx(b.rel_error, rel=1e-9)
