"""Key-format conversion (default / other / comfy) against musubi's convert_lora.py outputs and the maths."""

from __future__ import annotations

import math

import pytest
import torch

from convert_helpers import FIXTURES, applied, assert_same_effect, loha, lokr, lora, module, source_of, write
from hadakron.adapters import module_scale, parse_adapter_state_dict
from hadakron.common.errors import ConventionError, OutputExistsError
from hadakron.common.tensor_files import load_tensor_file
from hadakron.converters import FormatOptions, convert_file, convert_format, read_input
from hadakron.converters.hashes import safetensors_hashes
from hadakron.converters.io import LoadedAdapter
from hadakron.converters.names import NameTable, model_shapes

WAN = ["wan_lora_r4_a2", "wan_lokr_f4_r4_a1", "wan_lokr_r4_a2", "wan_lokr_full_r64_a64"]


def _loaded(tensors: dict, metadata: dict | None = None) -> LoadedAdapter:
    source = source_of(tensors, metadata)
    return LoadedAdapter("mem", dict(tensors), dict(metadata or {}), source.parsed, source.convention)


def _convert(tensors, metadata, target, **kw):
    return convert_format(_loaded(tensors, metadata), FormatOptions(target, **kw))


def wan_shapes(dim: int = 128, ffn: int = 256, blocks: int = 2) -> dict:
    shapes = {}
    for i in range(blocks):
        p = f"diffusion_model.blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            shapes.update({f"{p}{attn}.{m}.weight": (dim, dim) for m in "qkvo"})
        shapes[p + "ffn.0.weight"], shapes[p + "ffn.2.weight"] = (ffn, dim), (dim, ffn)
    return shapes


@pytest.mark.parametrize("name", WAN)
def test_other_matches_musubi(name):
    loaded = read_input(FIXTURES / f"{name}.safetensors")
    ours, meta, _ = convert_format(loaded, FormatOptions("other"))
    theirs, their_meta = load_tensor_file(FIXTURES / f"{name}.other.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        if name.startswith("wan_lokr_full") and key.endswith(".alpha"):
            base = key[: -len(".alpha")]  # portable alpha w2.shape[0] // w1.shape[0] (scale 1 everywhere)
            assert ours[key].item() == max(1, ours[base + ".lokr_w2"].shape[0] // ours[base + ".lokr_w1"].shape[0])
            continue
        assert torch.equal(ours[key], tensor), key
    assert {k: v for k, v in their_meta.items() if not k.startswith("sshs")} == {
        k: v for k, v in meta.items() if not k.startswith(("sshs", "hadakron."))
    }
    assert meta["hadakron.producer"] == "hadakron 0.1.0" and meta["hadakron.convention"] == "lycoris"
    assert safetensors_hashes(ours, meta)[0] == meta["sshs_model_hash"]


@pytest.mark.parametrize("name", WAN)
def test_default_other_default_round_trip(name):
    original = read_input(FIXTURES / f"{name}.safetensors")
    other, other_meta, _ = convert_format(original, FormatOptions("other"))
    back, back_meta, _ = _convert(other, other_meta, "default")
    musubi_back, _ = load_tensor_file(FIXTURES / f"{name}.other.default.safetensors")
    assert sorted(back) == sorted(original.tensors) == sorted(musubi_back)
    for key, tensor in original.tensors.items():
        if key.endswith(".alpha"):
            continue
        if ".lora_" in key:  # documented folding: factors × sqrt(alpha/r), alpha = r
            assert torch.equal(back[key], musubi_back[key]), key
            torch.testing.assert_close(back[key], tensor * math.sqrt(0.5))
        else:
            assert torch.equal(back[key], tensor), key
    want = applied(original.tensors, {}, wan_shapes(), "wan")
    assert_same_effect(applied(back, back_meta, wan_shapes(), "wan"), want)


@pytest.mark.parametrize("target", ["default", "other", "comfy"])
@pytest.mark.parametrize("name", WAN + ["wan_loha_r4_a2"])
def test_every_target_applies_like_the_original(name, target):
    original = read_input(FIXTURES / f"{name}.safetensors")
    out, meta, report = convert_format(original, FormatOptions(target))
    assert not report.kept
    want = applied(original.tensors, original.metadata, wan_shapes(), "wan")
    assert_same_effect(applied(out, meta, wan_shapes(), "wan"), want)


def test_musubi_other_default_with_int_alpha_reads():
    loaded = read_input(FIXTURES / "wan_lora_r4_a2.other.default.safetensors")
    assert {a.alpha for a in loaded.parsed.adapters()} == {4.0}


def test_flux_qkv_stays_qkv():
    gen = torch.Generator().manual_seed(1)
    tensors = {
        **module("lora_unet_double_blocks_0_img_attn_qkv", lokr((8, 8), (48, 16), 2, gen, alpha=1.0)),
        **module("lora_unet_single_blocks_0_linear1", lora(896, 128, 4, gen, alpha=4.0)),
        **module("lora_unet_double_blocks_0_txt_mlp_0", loha(512, 128, 2, gen, alpha=2.0)),
    }
    other, meta, _ = _convert(tensors, {}, "other")
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1" in other
    assert "diffusion_model.single_blocks.0.linear1.lora_A.weight" in other
    assert "diffusion_model.double_blocks.0.txt_mlp.0.hada_w1_a" in other
    back, _, _ = _convert(other, meta, "default")
    assert "lora_unet_double_blocks_0_img_attn_qkv.lokr_w1" in back
    comfy, _, _ = _convert(tensors, {}, "comfy")
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1" in comfy


def test_hunyuan_names_come_from_the_tables():
    gen = torch.Generator().manual_seed(2)
    tensors = {
        **module("lora_unet_double_blocks_0_img_mlp_fc1", lora(512, 128, 4, gen, alpha=4.0)),
        **module("lora_unet_double_blocks_0_img_attn_qkv", lora(384, 128, 4, gen, alpha=4.0)),
        **module("lora_unet_single_blocks_0_modulation_linear", lora(384, 128, 4, gen, alpha=4.0)),
    }
    other, _, _ = _convert(tensors, {}, "other")
    assert {
        "diffusion_model.double_blocks.0.img_mlp.fc1.lora_A.weight",
        "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight",
        "diffusion_model.single_blocks.0.modulation.linear.lora_A.weight",
    } <= set(other)
    comfy, _, _ = _convert(tensors, {}, "comfy")
    assert {
        "diffusion_model.double_blocks.0.img_mlp.0.lora_up.weight",
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight",
        "diffusion_model.single_blocks.0.modulation.lin.lora_up.weight",
    } <= set(comfy)


def test_name_table_recovers_dots_by_lookup():
    table = NameTable("z_image")
    assert table.recover("layers_12_attention_to_out_0").dotted == "layers.12.attention.to_out.0"
    assert table.recover("layers_3_feed_forward_w2").dotted == "layers.3.feed_forward.w2"
    assert table.comfy_name("layers_3_attention_to_k") == ("layers.3.attention.qkv", True)
    assert table.recover("layers_3_nonexistent_thing") is None
    shapes = model_shapes("z_image")
    assert shapes["diffusion_model.layers.29.attention.qkv.weight"] == (11520, 3840)
    assert "diffusion_model.x_pad_token" in shapes


def _everything_file(gen) -> tuple[dict, dict]:
    """Every key kind that must survive: Tucker LoHa, decomposed-w1 LoKr, Tucker LoKr, DoRA, globals …"""
    tensors = {
        **module("lora_unet_blocks_0_self_attn_q", lora(128, 128, 4, gen)),  # no alpha
        **module("lora_unet_blocks_0_self_attn_k", lokr((8, 8), (16, 16), 4, gen)),  # no alpha, low rank
        **module("lora_unet_blocks_0_self_attn_v", lokr((8, 8), (16, 16), None, gen, alpha=1e10)),  # full, odd alpha
        **module("lora_unet_blocks_0_self_attn_o", lokr((8, 8), (16, 16), 4, gen, alpha=2.0, w1_rank=3)),
        **module("lora_unet_blocks_0_ffn_0", loha(256, 128, 4, gen, alpha=2.0)),
        "lora_unet_blocks_0_ffn_0.dora_scale": torch.rand(256, 1, generator=gen) + 0.5,
        "lora_unet_patch_embedding.hada_w1_a": torch.randn(4, 16, generator=gen),
        "lora_unet_patch_embedding.hada_w1_b": torch.randn(4, 4, generator=gen),
        "lora_unet_patch_embedding.hada_w2_a": torch.randn(4, 16, generator=gen),
        "lora_unet_patch_embedding.hada_w2_b": torch.randn(4, 4, generator=gen),
        "lora_unet_patch_embedding.hada_t1": torch.randn(4, 4, 1, 2, 2, generator=gen),
        "lora_unet_patch_embedding.hada_t2": torch.randn(4, 4, 1, 2, 2, generator=gen),
        "lora_unet_patch_embedding.alpha": torch.tensor(2.0),
        "lokr_factor": torch.tensor(-1.0),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(8, 2, generator=gen),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 4, generator=gen),
        "some_unknown_key": torch.ones(3),
    }
    metadata = {"ss_lokr_factor": "-1", "ss_network_module": "networks.lokr", "modelspec.title": "x"}
    return tensors, metadata


@pytest.mark.parametrize("target", ["default", "other", "comfy"])
def test_every_key_and_metadata_survive(target):
    tensors, metadata = _everything_file(torch.Generator().manual_seed(3))
    out, meta, report = _convert(tensors, metadata, target)
    assert {k: v for k, v in meta.items() if not k.startswith("hadakron.")} == metadata
    roles = sorted(k.rsplit(".", 1)[-1] for k in tensors if not k.endswith(".alpha"))
    out_roles = sorted(k.rsplit(".", 1)[-1] for k in out if not k.endswith(".alpha"))
    assert roles == out_roles
    assert out["lokr_factor"] is tensors["lokr_factor"] and "some_unknown_key" in out
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in out
    parsed = parse_adapter_state_dict(out, meta)
    full = next(a for a in parsed.adapters() if a.algo == "lokr" and a.weights.is_full)
    assert full.alpha == 2.0  # portable alpha: 16 // 8
    if target != "other":
        lora_q = next(a for a in parsed.adapters() if a.algo == "lora" and "self_attn_q" in a.name.replace(".", "_"))
        assert lora_q.alpha == 4.0  # synthesised alpha = rank
        assert report.synthesised_alpha


def test_pr901_full_lokr_scale_is_folded_so_the_effect_holds():
    gen = torch.Generator().manual_seed(4)
    tensors = {**module("lora_unet_blocks_0_self_attn_q", lokr((8, 8), (16, 16), None, gen, alpha=4.0))}
    tensors["lokr_factor"] = torch.tensor(-1.0)  # PR #901 marker: full LoKr scale = alpha / max(w2.shape) = 0.25
    source = source_of(tensors)
    assert module_scale(next(source.parsed.adapters()), source.convention.convention) == 0.25
    out, meta, report = _convert(tensors, {}, "default")
    assert report.folded and out["lora_unet_blocks_0_self_attn_q.alpha"].item() == 2.0
    shapes = {"diffusion_model.blocks.0.self_attn.q.weight": (128, 128)}
    assert_same_effect(applied(out, meta, shapes, "wan"), applied(tensors, {}, shapes, "wan"))


def test_comfy_target_uses_native_slice_names_for_zimage():
    loaded = read_input(FIXTURES / "zimage_lokr_r4_a2.safetensors")
    out, _, report = convert_format(loaded, FormatOptions("comfy"))
    assert "diffusion_model.layers.0.attention.to_q.lokr_w1" in out
    assert "diffusion_model.layers.0.attention.out.lokr_w1" in out
    assert "diffusion_model.layers.0.feed_forward.w2.lokr_w1" in out
    assert any("natively" in n for n in report.notes)


def test_comfy_target_fuses_hv15_qkv():
    gen = torch.Generator().manual_seed(5)
    tensors = {}
    for part in "qkv":
        tensors.update(module(f"lora_unet_double_blocks_0_img_attn_{part}", lora(128, 128, 4, gen, alpha=2.0)))
    tensors.update(module("lora_unet_double_blocks_0_img_mod_linear", lora(768, 128, 4, gen, alpha=2.0)))
    out, _, report = _convert(tensors, {}, "comfy")
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight" in out
    assert "diffusion_model.double_blocks.0.img_mod.lin.lora_up.weight" in out
    assert report.fused and any("fused" in n for n in report.notes)


def test_files_never_overwrite(tmp_path):
    src = write(tmp_path / "a.safetensors", module("lora_unet_blocks_0_ffn_0", lora(256, 128, 4, torch.Generator())))
    out = tmp_path / "b.safetensors"
    convert_file(src, out, FormatOptions("other"))
    with pytest.raises(OutputExistsError):
        convert_file(src, out, FormatOptions("other"))
    convert_file(src, out, FormatOptions("comfy"), overwrite=True)
    with pytest.raises(OutputExistsError):
        convert_file(src, src, FormatOptions("comfy"), overwrite=True)
    with pytest.raises(ConventionError):
        convert_file(src, tmp_path / "c.safetensors", FormatOptions("nope"))
