"""Reference: musubi-tuner (main @ 30c658c) files vs HadaKron, on tiny ComfyUI WAN and Z-Image models.

The files and references in tests/fixtures/musubi were written by musubi's own code (PROVENANCE.md).
Their base weights were zero, so ``merged_proj.<m> = input.<m> @ ΔW_musubi.T``; the ComfyUI models are
zeroed too, so HadaKron's patched weight is its ΔW.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from producers import TOL, copy_into_loras, delta, load, rel_err, zeroed, zimage_model
from tiny_models import build_tiny

pytestmark = pytest.mark.comfy
FIXTURES = Path(__file__).parent / "fixtures" / "musubi"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["files"]

WAN_FILES = [
    ("wan_lora_r4_a2", "wan_lora_r4_a2"),
    ("wan_loha_r4_a2", "wan_loha_r4_a2"),
    ("wan_lokr_r4_a2", "wan_lokr_r4_a2"),
    ("wan_lokr_full_r64_a64", "wan_lokr_full_r64_a64"),
    ("wan_lokr_full_r64_a16", "wan_lokr_full_r64_a64"),  # alpha forced to network_dim: same ΔW
    ("wan_lokr_f4_r4_a1", "wan_lokr_f4_r4_a1"),
]
CONVERTED = ("wan_lora_r4_a2", "wan_lokr_r4_a2", "wan_lokr_full_r64_a64", "wan_lokr_f4_r4_a1")
WAN_FILES += [(f"{n}.other", n) for n in CONVERTED] + [(f"{n}.other.default", n) for n in CONVERTED]

ZIMAGE_UNFUSED = ["zimage_lora_r4_a2", "zimage_loha_r4_a2", "zimage_lokr_r4_a2", "zimage_lokr_f4_r2_a1"]
ZIMAGE_EXACT = [
    ("zimage_lora_r4_a2.comfy", "zimage_lora_r4_a2"),
    ("zimage_lora_r4_a2.comfy.reverse", "zimage_lora_r4_a2"),
    ("zimage_loha_r4_a2.comfy", "zimage_loha_r4_a2"),
    ("zimage_lokr_f4_r2_a1.comfy", "zimage_lokr_f4_r2_a1"),  # auto SVD rank 24: logged error 1e-6
] + [(n, n) for n in ZIMAGE_UNFUSED]
ZIMAGE_LOSSY = [
    ("zimage_lokr_r4_a2.comfy_rank8", "zimage_lokr_r4_a2"),
    ("zimage_lokr_f4_r2_a1.comfy_rank8", "zimage_lokr_f4_r2_a1"),
]
QKV = "diffusion_model.layers.0.attention.qkv.weight"


# Zeroed like musubi's own bases: musubi's factors are randn·0.1, its ΔW ~1e-3 of the tiny model's
# weights, and ``patched - base`` would lose more than TOL to cancellation.
@pytest.fixture(scope="module")
def wan(comfy):
    return zeroed(build_tiny("wan21", seed=6))


@pytest.fixture(scope="module")
def zimage(comfy):
    return zeroed(zimage_model(dim=256, ffn_multiplier=2.0, seed=7))


def _references(ref: str) -> dict[str, dict[str, torch.Tensor]]:
    """``module -> {input, merged_proj, output}`` from a musubi ``.reference.safetensors``."""
    tensors, out = load_file(str(FIXTURES / f"{ref}.reference.safetensors")), {}
    for key, tensor in tensors.items():
        kind, _, module = key.partition(".")
        if kind in ("input", "merged_proj", "output"):
            out.setdefault(module, {})[kind] = tensor
    return out


def _zimage_target(module: str) -> tuple[str, int | None]:
    """musubi's unfused Z-Image module -> (ComfyUI key, first row in fused qkv or None)."""
    match = re.fullmatch(r"layers\.0\.attention\.to_([qkv])", module)
    if match:
        return QKV, "qkv".index(match.group(1)) * 256
    return f"diffusion_model.{module.replace('attention.to_out.0', 'attention.out')}.weight", None


def _module_delta(model, mp, module: str, cache: dict) -> torch.Tensor:
    key, row = _zimage_target(module) if module.startswith("layers.") else (f"diffusion_model.{module}.weight", None)
    if key not in cache:
        cache[key] = delta(model, mp, key)
    return cache[key] if row is None else cache[key][row : row + 256]


def _probe_errors(model, mp, ref: str, skip=()) -> dict[str, float]:
    """Per module: max relative error of ``X @ ΔW_hadakron.T`` vs musubi's merge and forward."""
    cache, errors = {}, {}
    for module, r in _references(ref).items():
        if module in skip:
            continue
        got = r["input"] @ _module_delta(model, mp, module, cache).T
        errors[module] = max(rel_err(got, r["merged_proj"]), rel_err(got, r["output"]))
    return errors


def _assert_exact(errors: dict[str, float], expected: int, report: str):
    assert len(errors) == expected, sorted(errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst}: relative error {errors[worst]:.2e}\n{report}"


@pytest.mark.parametrize("name, ref", WAN_FILES, ids=[f for f, _ in WAN_FILES])
def test_wan_files_match_musubi_merge_and_forward(comfy, wan, name, ref):
    model, report = load(comfy, wan, copy_into_loras(comfy, FIXTURES / f"{name}.safetensors", "musubi_ref"))
    assert "convention: lycoris" in report and len(model.patches) == 20, report
    _assert_exact(_probe_errors(model, wan, ref), 20, report)
    merged = load_file(str(FIXTURES / f"{ref}.reference.safetensors"))["merged.blocks.0.self_attn.q.weight"]
    q = "diffusion_model.blocks.0.self_attn.q.weight"
    assert rel_err(delta(model, wan, q), merged) <= TOL


@pytest.mark.parametrize("name, ref", ZIMAGE_EXACT, ids=[f for f, _ in ZIMAGE_EXACT])
def test_zimage_files_on_fused_qkv_match_unfused_reference(comfy, zimage, name, ref):
    model, report = load(comfy, zimage, copy_into_loras(comfy, FIXTURES / f"{name}.safetensors", "musubi_ref"))
    assert set(model.patches) == {QKV} | {
        f"diffusion_model.layers.0.{m}.weight"
        for m in ("attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
    }
    _assert_exact(_probe_errors(model, zimage, ref), 7, report)


def _logged_qkv_error(name: str) -> float:
    line = next(ln for ln in MANIFEST[f"{name}.safetensors"]["musubi_log"] if "relative error=" in ln)
    return float(line.rsplit("relative error=", 1)[1])


@pytest.mark.parametrize("name, ref", ZIMAGE_LOSSY, ids=[f for f, _ in ZIMAGE_LOSSY])
def test_zimage_lokr_to_lora_rank8_hybrid(comfy, zimage, name, ref):
    """LoRA on qkv (lossy SVD of the stacked LoKr ΔW) + LoKr elsewhere: the LoKr modules are exact,
    the qkv error against the unfused LoKr equals the relative error musubi logged."""
    lossy, report = load(comfy, zimage, copy_into_loras(comfy, FIXTURES / f"{name}.safetensors", "musubi_ref"))
    assert "lora: 1" in report and "lokr: 4" in report, report
    qkv_modules = {f"layers.0.attention.to_{p}" for p in "qkv"}
    _assert_exact(_probe_errors(lossy, zimage, ref, skip=qkv_modules), 4, report)
    exact, _ = load(comfy, zimage, copy_into_loras(comfy, FIXTURES / f"{ref}.safetensors", "musubi_ref"))
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    up, down = (tensors[f"lora_unet_layers_0_attention_qkv.lora_{p}.weight"] for p in ("up", "down"))
    assert float(tensors["lora_unet_layers_0_attention_qkv.alpha"]) == down.shape[0]  # alpha = k: scale 1
    assert rel_err(delta(lossy, zimage, QKV), up @ down) <= TOL
    measured = rel_err(delta(lossy, zimage, QKV), delta(exact, zimage, QKV))
    assert measured == pytest.approx(_logged_qkv_error(name), abs=2e-6)
