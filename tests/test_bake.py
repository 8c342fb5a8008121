"""Baking adapters into a model file (merge/bake.py): exact, streaming, every key/dtype/shape/metadata kept.

Engine tests use hand-built WAN-named model files; the ``comfy`` tests compare the baked file with
what ComfyUI's patcher computes after HadaKron's loader node, on a real tiny WAN model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hadakron.common.errors import ArchitectureMismatchError, OutputExistsError, UnsupportedError
from hadakron.merge import BakeAdapter, bake_file, open_model_file, round_to_dtype
from hadakron.merge.rounding import stochastic_round_fp8
from loader_helpers import dense, factors, patched, rank_of, write_adapter

PREFIXES = ("", "diffusion_model.", "model.diffusion_model.")
# (file module name, algo, model module)
MODULES = [
    ("lora_unet_blocks_0_self_attn_q", "lokr", "blocks.0.self_attn.q"),
    ("diffusion_model.blocks.0.ffn.0", "loha", "blocks.0.ffn.0"),
    ("transformer.blocks.1.attn1.to_k", "lora", "blocks.1.self_attn.k"),
    ("lycoris_blocks_1_ffn_2", "lokr_full", "blocks.1.ffn.2"),
]


def wan_like_state(dtype=torch.float32, seed=0) -> dict[str, torch.Tensor]:
    """A small WAN-named diffusion model (2 blocks, width 64) plus a non-float buffer."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for b in range(2):
        for n in "qkvo":
            sd[f"blocks.{b}.self_attn.{n}.weight"] = torch.randn(64, 64, generator=g) / 8
            sd[f"blocks.{b}.self_attn.{n}.bias"] = torch.randn(64, generator=g) / 100
        sd[f"blocks.{b}.ffn.0.weight"] = torch.randn(128, 64, generator=g) / 8
        sd[f"blocks.{b}.ffn.2.weight"] = torch.randn(64, 128, generator=g) / 11
        sd[f"blocks.{b}.norm3.weight"] = torch.ones(64)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    sd["freqs_index"] = torch.arange(7, dtype=torch.int64)
    return sd


def write_model(path: Path, sd: dict, prefix: str = "", metadata: dict | None = None) -> Path:
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def make_adapter(folder: Path, name: str, modules=MODULES, seed=1, alpha=2.0, out_in=None):
    """Write an adapter; returns (path, {model module: scaled dense ΔW})."""
    g = torch.Generator().manual_seed(seed)
    shapes = out_in or {"blocks.0.self_attn.q": (64, 64), "blocks.0.ffn.0": (128, 64)}
    shapes = {**{"blocks.1.self_attn.k": (64, 64), "blocks.1.ffn.2": (64, 128)}, **shapes}
    tensors, expected = {}, {}
    for file_name, algo, module in modules:
        out, inp = shapes[module]
        parts = factors(algo.replace("_full", ""), out, inp, gen=g, full_lokr=algo.endswith("_full"))
        tensors.update({file_name + k: v for k, v in parts.items()})
        tensors[file_name + ".alpha"] = torch.tensor(alpha)
        rank = rank_of(parts)
        expected[module] = (1.0 if rank is None else alpha / rank) * dense(parts)
    path = folder / name
    save_file(tensors, str(path))
    return path, expected


def read_all(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_bake_matches_dense_reference_and_keeps_everything(tmp_path, prefix):
    sd = wan_like_state()
    model = write_model(tmp_path / "m.safetensors", sd, prefix, {"modelspec.title": "tiny", "x": "1"})
    adapter, expected = make_adapter(tmp_path, "a.safetensors")
    report = bake_file(model, [BakeAdapter(str(adapter), strength=0.7)], tmp_path / "out.safetensors")
    out, meta = read_all(tmp_path / "out.safetensors")
    src, src_meta = read_all(model)
    assert list(out) == list(src)
    assert all(out[k].dtype == src[k].dtype and out[k].shape == src[k].shape for k in src)
    assert {k: meta[k] for k in src_meta} == src_meta and "hadakron.baked" in meta
    assert report.keys_patched == len(expected) and report.family == "wan"
    for key in src:
        module = key[len(prefix) :].removesuffix(".weight")
        want = src[key] + 0.7 * expected[module] if module in expected else src[key]
        torch.testing.assert_close(out[key], want, rtol=1e-5, atol=1e-6)


def test_strength_zero_is_bitwise_identity_for_every_dtype(tmp_path):
    sd = wan_like_state()
    sd["blocks.0.self_attn.q.weight"] = sd["blocks.0.self_attn.q.weight"].bfloat16()
    sd["blocks.0.ffn.0.weight"] = sd["blocks.0.ffn.0.weight"].half()
    sd["blocks.1.ffn.2.weight"] = sd["blocks.1.ffn.2.weight"].to(torch.float8_e4m3fn)
    model = write_model(tmp_path / "m.safetensors", sd)
    adapter, _ = make_adapter(tmp_path, "a.safetensors")
    bake_file(model, [BakeAdapter(str(adapter), strength=0.0)], tmp_path / "out.safetensors")
    out, _ = read_all(tmp_path / "out.safetensors")
    for key, value in load_file(str(model)).items():
        assert out[key].dtype == value.dtype
        assert torch.equal(out[key].view(torch.uint8), value.view(torch.uint8)), key


def test_bf16_model_is_computed_in_fp32_and_rounded_once(tmp_path):
    sd = wan_like_state(torch.bfloat16)
    model = write_model(tmp_path / "m.safetensors", sd, "diffusion_model.")
    adapter, expected = make_adapter(tmp_path, "a.safetensors")
    bake_file(model, [BakeAdapter(str(adapter))], tmp_path / "out.safetensors")
    out, _ = read_all(tmp_path / "out.safetensors")
    for module, delta in expected.items():
        key = f"diffusion_model.{module}.weight"
        assert out[key].dtype == torch.bfloat16
        want = (sd[f"{module}.weight"].float() + delta).bfloat16()
        assert torch.equal(out[key], want), module


def test_several_adapters_apply_in_order_with_their_own_strength_and_blocks(tmp_path):
    sd = wan_like_state()
    model = write_model(tmp_path / "m.safetensors", sd)
    a, da = make_adapter(tmp_path, "a.safetensors", seed=1)
    b, db = make_adapter(tmp_path, "b.safetensors", seed=2)
    adapters = [BakeAdapter(str(a), 0.5, block_strengths={1: 0.0}), BakeAdapter(str(b), -1.0, "peft")]
    report = bake_file(model, adapters, tmp_path / "out.safetensors")
    out, _ = read_all(tmp_path / "out.safetensors")
    assert len(report.adapters) == 2 and report.adapters[1][1].convention == "peft"
    for module in da:
        block_a = 0.0 if module.startswith("blocks.1.") else 0.5
        want = sd[f"{module}.weight"] + block_a * da[module] - db[module]
        torch.testing.assert_close(out[f"{module}.weight"], want, rtol=1e-5, atol=1e-6)


def test_fp8_weights_use_key_seeded_stochastic_rounding(tmp_path):
    sd = wan_like_state()
    sd["blocks.0.ffn.0.weight"] = sd["blocks.0.ffn.0.weight"].to(torch.float8_e4m3fn)
    model = write_model(tmp_path / "m.safetensors", sd)
    adapter, expected = make_adapter(tmp_path, "a.safetensors")
    bake_file(model, [BakeAdapter(str(adapter))], tmp_path / "o1.safetensors")
    bake_file(model, [BakeAdapter(str(adapter))], tmp_path / "o2.safetensors")
    key = "blocks.0.ffn.0.weight"
    first, second = load_file(str(tmp_path / "o1.safetensors"))[key], load_file(str(tmp_path / "o2.safetensors"))[key]
    assert first.dtype == torch.float8_e4m3fn and torch.equal(first.view(torch.uint8), second.view(torch.uint8))
    exact = sd[key].float() + expected["blocks.0.ffn.0"]
    nearest = exact.to(torch.float8_e4m3fn).float()
    # each value is one of the two fp8 neighbours of the exact result (spacing <= 2^-3 relative, 2^-9
    # subnormal), and not always the nearest one
    spacing = torch.maximum(exact.abs() * 2**-3, torch.full_like(exact, 2**-9))
    assert ((first.float() - exact).abs() <= spacing * 1.0001).all()
    assert not torch.equal(first.float(), nearest)


def test_stochastic_fp8_rounding_is_unbiased_and_keeps_representable_values():
    x = torch.randn(20000) * 2
    samples = torch.stack([stochastic_round_fp8(x, torch.float8_e5m2, seed).float() for seed in range(64)])
    spacing = (x.abs() * 2**-2).clamp_min(2**-16)
    assert ((samples.mean(0) - x).abs() / spacing).mean() < 0.1
    q = x.to(torch.float8_e4m3fn).float()
    assert torch.equal(round_to_dtype(q, torch.float8_e4m3fn, "k").float(), q)
    assert torch.equal(round_to_dtype(x, torch.bfloat16, "k"), x.bfloat16())


def test_quantised_and_scaled_fp8_weights_point_to_bypass(tmp_path):
    adapter, _ = make_adapter(tmp_path, "a.safetensors")
    sd = wan_like_state()
    sd["blocks.0.self_attn.q.weight"] = (sd["blocks.0.self_attn.q.weight"] * 100).to(torch.int8)
    model = write_model(tmp_path / "int8.safetensors", sd)
    with pytest.raises(UnsupportedError, match="bypass"):
        bake_file(model, [BakeAdapter(str(adapter))], tmp_path / "o.safetensors")
    sd = wan_like_state()
    sd["blocks.0.ffn.0.weight"] = sd["blocks.0.ffn.0.weight"].to(torch.float8_e4m3fn)
    sd["blocks.0.ffn.0.scale_weight"] = torch.tensor(0.5)
    model = write_model(tmp_path / "scaled.safetensors", sd)
    with pytest.raises(UnsupportedError, match="scaled fp8"):
        bake_file(model, [BakeAdapter(str(adapter))], tmp_path / "o.safetensors")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(UnsupportedError, match="GGUF"):
        bake_file(gguf, [BakeAdapter(str(adapter))], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_no_overwrite_and_nothing_matching_are_clear_errors(tmp_path):
    model = write_model(tmp_path / "m.safetensors", wan_like_state())
    adapter, _ = make_adapter(tmp_path, "a.safetensors")
    (tmp_path / "exists.safetensors").write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        bake_file(model, [BakeAdapter(str(adapter))], tmp_path / "exists.safetensors")
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep"
    with pytest.raises(OutputExistsError, match="input model"):
        bake_file(model, [BakeAdapter(str(adapter))], model, overwrite=True)
    other, _ = make_adapter(
        tmp_path, "other.safetensors", [("lora_unet_double_blocks_0_img_attn_qkv", "lora", "x")], out_in={"x": (64, 64)}
    )
    with pytest.raises(ArchitectureMismatchError, match="nothing was"):
        bake_file(model, [BakeAdapter(str(other))], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hadakron-tmp")]


def test_model_file_reads_header_only_and_normalises_prefix(tmp_path):
    sd = wan_like_state()
    sd = {**{"model.diffusion_model." + k: v for k, v in sd.items()}, "first_stage_model.w": torch.ones(2)}
    save_file(sd, str(tmp_path / "ckpt.safetensors"))
    model = open_model_file(tmp_path / "ckpt.safetensors")
    assert model.prefix == "model.diffusion_model." and model.family == "wan"
    assert "diffusion_model.blocks.0.ffn.0.weight" in model.shapes
    assert not any("first_stage" in k for k in model.shapes)
    assert model.shapes["diffusion_model.blocks.0.ffn.2.weight"] == (64, 128)


_MEMORY_SCRIPT = """
import resource, sys, torch
from hadakron.merge import BakeAdapter, bake_file
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
torch.ones(1) + 1
before = rss_mib()
bake_file(sys.argv[1], [BakeAdapter(sys.argv[2])], sys.argv[3])
print(rss_mib() - before)
"""


def test_bake_streams_one_layer_at_a_time(tmp_path):
    """Peak memory grows by the mmap'd input plus a few layers, not by a second copy of the model."""
    import subprocess
    import sys

    layers, size = 24, 1024  # 24 fp32 layers of 4 MiB = 96 MiB, each patched by a LoRA
    gen = torch.Generator().manual_seed(0)
    sd = {f"blocks.{i}.ffn.0.weight": torch.randn(size, size, generator=gen) for i in range(layers)}
    model = write_model(tmp_path / "big.safetensors", sd)
    modules = {f"lora_unet_blocks_{i}_ffn_0": i for i in range(layers)}
    tensors = {}
    for name in modules:
        tensors.update({name + k: v for k, v in factors("lora", size, size, gen=gen).items()})
    save_file(tensors, str(tmp_path / "a.safetensors"))
    argv = [sys.executable, "-c", _MEMORY_SCRIPT, str(model), str(tmp_path / "a.safetensors"), str(tmp_path / "o.st")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    growth_mib, model_mib = float(done.stdout.split()[-1]), layers * 4
    assert growth_mib < model_mib + 8 * 4, f"peak grew {growth_mib:.0f} MiB for a {model_mib} MiB model"


BLOCK_CASES = {
    "wan21": {"num_layers": 12},
    "zimage": {"n_layers": 11, "n_refiner_layers": 2},
    "hunyuan_video": {"depth": 11, "depth_single_blocks": 2},
    "flux1": {"depth": 2, "depth_single_blocks": 10},
}


@pytest.mark.parametrize("family", list(BLOCK_CASES))
def test_block_numbering_of_a_file_matches_the_live_model(comfy, tmp_path, family):
    """``--blocks`` numbers blocks like the loader node does on the live model (file order is by name)."""
    import tiny_models
    from hadakron.keymap import KeyResolver

    cls_name, cfg = tiny_models.tiny_config(family)
    model = tiny_models._build_model(cls_name, tiny_models._drop_newer_keys({**cfg, **BLOCK_CASES[family]}), 0)
    live = {f"diffusion_model.{k}": tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in model.diffusion_model.state_dict().items()}, str(tmp_path / "m.st"))
    from_file = open_model_file(tmp_path / "m.st").resolver()
    assert from_file.block_ordinals == KeyResolver(live, from_file.family).block_ordinals


# --- against ComfyUI's own patcher (loader node on a real tiny WAN model) ------------------------


def _tiny_wan(comfy, dtype=torch.float32):
    from tiny_models import build_tiny

    mp = build_tiny("wan21", seed=3)
    if dtype != torch.float32:  # the same values as a file stored in `dtype`
        state = {k: v.to(dtype).float() for k, v in mp.model.diffusion_model.state_dict().items()}
        mp.model.diffusion_model.load_state_dict(state)
    return mp


def _tiny_adapter(comfy, mp, name: str, seed: int) -> str:
    from test_loader_inprocess import _loras_dir

    sd, g = mp.model.state_dict(), torch.Generator().manual_seed(seed)
    last = len(mp.model.diffusion_model.blocks) - 1
    tensors = {}
    cases = [
        ("lora_unet_blocks_0_self_attn_q", "lokr"),
        ("lora_unet_blocks_0_self_attn_k", "lokr_full"),
        (f"diffusion_model.blocks.{last}.ffn.0", "loha"),
        (f"transformer.blocks.{last}.attn2.to_out.0", "lora"),
        ("lora_unet_blocks_0_ffn_2", "lora"),
    ]
    from hadakron.keymap import KeyResolver

    resolver = KeyResolver({k: tuple(v.shape) for k, v in sd.items()}, family="wan")
    for module, algo in cases:
        out, inp = resolver.target_shape(resolver.resolve(module))[:2]
        parts = factors(algo.replace("_full", ""), out, inp, gen=g, full_lokr=algo.endswith("_full"))
        tensors.update({module + k: v for k, v in parts.items()})
        tensors[module + ".alpha"] = torch.tensor(3.0)
    return write_adapter(_loras_dir(comfy), name, tensors)


def _load_node(comfy, mp, name, strength=1.0, blocks=""):
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        out = node.execute(
            model=mp, adapter_name=name, strength_model=strength, convention="auto", block_strengths=blocks
        )
    return out.result[0]


@pytest.mark.parametrize(("dtype", "prefix"), [(torch.float32, ""), (torch.bfloat16, "model.diffusion_model.")])
def test_cli_bake_equals_in_process_patching(comfy, tmp_path, dtype, prefix):
    from hadakron.cli import main

    mp = _tiny_wan(comfy, dtype)
    a = _tiny_adapter(comfy, mp, "bake_a.safetensors", seed=11)
    b = _tiny_adapter(comfy, mp, "bake_b.safetensors", seed=12)
    loras = Path(comfy.folder_paths.get_folder_paths("loras")[0])
    state = {k: v.to(dtype) for k, v in mp.model.diffusion_model.state_dict().items()}
    model = write_model(tmp_path / "tiny.safetensors", state, prefix)
    out = tmp_path / "baked.safetensors"
    argv = [
        "merge",
        "--model",
        str(model),
        "--adapter",
        str(loras / a),
        "--strength",
        "0.6",
        "--blocks",
        "1:0.25",
        "--adapter",
        str(loras / b),
        "--strength",
        "-0.4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    patched_model = _load_node(comfy, _load_node(comfy, mp, a, 0.6, "1:0.25"), b, -0.4)
    baked, _ = read_all(out)
    assert set(baked) == {prefix + k for k in state}
    n_patched = 0
    for key, value in state.items():
        want = patched(patched_model, "diffusion_model." + key).to(dtype)
        got = baked[prefix + key]
        assert got.dtype == dtype and got.shape == value.shape
        tol = {} if dtype == torch.float32 else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(got, want, **tol)
        n_patched += not torch.equal(got, value)
    assert n_patched == 5


def test_bake_lokr_on_tiny_model_comfy_rejects(comfy, tmp_path):
    """The tiny WAN (text_dim 64) is not detectable by ComfyUI; names alone give the family."""
    mp = _tiny_wan(comfy)
    state = {k: v for k, v in mp.model.diffusion_model.state_dict().items()}
    model = write_model(tmp_path / "tiny.safetensors", state)
    assert open_model_file(model).family == "wan"
    name = _tiny_adapter(comfy, mp, "bake_c.safetensors", seed=13)
    loras = Path(comfy.folder_paths.get_folder_paths("loras")[0])
    report = bake_file(model, [BakeAdapter(str(loras / name), 1.5)], tmp_path / "o.safetensors")
    assert report.keys_patched == 5 and math.isclose(report.adapters[0][0].strength, 1.5)
