"""Reference: PEFT (LoKr, LoHa, LoRA via ``save_pretrained``) vs HadaKron on the tiny ComfyUI WAN model.

PEFT wraps a plain torch mirror of the model (ComfyUI names, or diffusers names for LoRA), its adapter
parameters are randomised (PEFT zero-inits one factor), ``save_pretrained`` writes
``adapter_model.safetensors`` + ``adapter_config.json`` into a subfolder of ComfyUI's loras folder,
and HadaKron (convention ``auto``) must detect PEFT from the config and reproduce PEFT's forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from producers import TOL, delta, load, loras_dir, mirror_tree, randomize_, rel_err
from tiny_models import build_tiny

pytestmark = pytest.mark.comfy
peft = pytest.importorskip("peft")
STRENGTH = 0.7
COMFY_TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]
DIFFUSERS_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj", "ffn.net.2"]
# diffusers WAN name -> ComfyUI name (the pieces that differ)
DIFFUSERS_TO_COMFY = {
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_out.0": "cross_attn.o",
    "attn1.to_": "self_attn.",
    "attn2.to_": "cross_attn.",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


@pytest.fixture(scope="module")
def wan(comfy):
    return build_tiny("wan21", seed=5)


def _comfy_tree(wan):
    return mirror_tree(wan.model.diffusion_model)


def _diffusers_tree(wan):
    """The WAN blocks under diffusers names (attn1.to_q, ffn.net.0.proj …), ComfyUI's base weights."""
    comfy_tree, root = mirror_tree(wan.model.diffusion_model), nn.Module()
    root.blocks = nn.ModuleList()
    for i in range(2):
        block, new = comfy_tree.get_submodule(f"blocks.{i}"), nn.Module()
        for attn, src in (("attn1", block.self_attn), ("attn2", block.cross_attn)):
            new.add_module(attn, nn.Module())
            for p in "qkv":
                getattr(new, attn).add_module(f"to_{p}", getattr(src, p))
            getattr(new, attn).to_out = nn.ModuleList([src.o])
        new.ffn = nn.Module()
        new.ffn.net = nn.ModuleList([nn.Module(), nn.GELU(), block.get_submodule("ffn.2")])
        new.ffn.net[0].proj = block.get_submodule("ffn.0")
        root.blocks.append(new)
    return root


def _comfy_key(peft_name: str) -> str:
    name = peft_name.removeprefix("base_model.model.")
    for old, new in DIFFUSERS_TO_COMFY.items():
        name = name.replace(old, new)
    return f"diffusion_model.{name}.weight"


def _save(comfy, tree, config, case: str, seed: int):
    model = peft.get_peft_model(tree, config)
    randomize_([(n, p) for n, p in model.named_parameters() if p.requires_grad], seed=seed, std=0.5)
    model.save_pretrained(str(loras_dir(comfy) / "peft_ref" / case))
    return model, f"peft_ref/{case}/adapter_model.safetensors"


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@torch.no_grad()
def _forward_errors(model, patched_model, wan) -> dict[str, float]:
    """Per wrapped Linear: HadaKron's Δoutput vs PEFT's ``μ·(layer(x) - base_layer(x))``."""
    gen, errors = torch.Generator().manual_seed(1), {}
    for name, layer in _tuner_layers(model):
        key = _comfy_key(name)
        x = torch.randn(3, layer.base_layer.in_features, generator=gen)
        want = STRENGTH * (layer(x) - layer.base_layer(x))
        assert float(want.norm()) > 1e-2 * float(x.norm()), f"{name}: PEFT adapter has no effect"
        errors[key] = rel_err(x @ delta(patched_model, wan, key).T, want)
    return errors


def _check(comfy, wan, tree, config, case, seed, expected):
    model, name = _save(comfy, tree, config, case, seed)
    patched_model, report = load(comfy, wan, name, STRENGTH)
    assert "convention: peft" in report, report
    errors = _forward_errors(model, patched_model, wan)
    assert len(errors) == expected and set(patched_model.patches) == set(errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst}: relative error {errors[worst]:.2e}\n{report}"
    return model, patched_model


def test_lokr_w1_larger_with_rank_and_alpha_patterns(comfy, wan):
    """decompose_factor 16 on 128-wide layers: PEFT does not swap, so w1 16×16 > w2 8×8 (spec §5)."""
    config = peft.LoKrConfig(
        r=4,
        alpha=2,
        target_modules=COMFY_TARGETS,
        decompose_factor=16,
        rank_pattern={"ffn.0": 8},
        alpha_pattern={r"blocks\.1\.self_attn\.k": 3},
    )
    model, patched_model = _check(comfy, wan, _comfy_tree(wan), config, "lokr_f16", seed=11, expected=20)
    layer = model.get_submodule("base_model.model.blocks.0.self_attn.q")
    assert layer.lokr_w1["default"].shape == (16, 16) and layer.lokr_w2["default"].shape == (8, 8)
    _check_merge_and_unload(model, patched_model, wan)


@torch.no_grad()
def _check_merge_and_unload(model, patched_model, wan):
    """PEFT's own merge (on a copy) gives the same weights as HadaKron's patches."""
    merged = copy.deepcopy(model).merge_and_unload()
    for name, layer in _tuner_layers(model):
        path = name.removeprefix("base_model.model.")
        key = _comfy_key(name)
        want = STRENGTH * (merged.get_submodule(path).weight - layer.base_layer.weight)
        assert rel_err(delta(patched_model, wan, key), want) <= TOL, key


def test_lokr_decompose_both_low_rank(comfy, wan):
    config = peft.LoKrConfig(r=2, alpha=3, target_modules=COMFY_TARGETS, decompose_both=True, rank_pattern={"ffn.2": 1})
    model, _ = _check(comfy, wan, _comfy_tree(wan), config, "lokr_both", seed=12, expected=20)
    layer = model.get_submodule("base_model.model.blocks.0.self_attn.q")
    assert set(layer.lokr_w1_a) == {"default"} and set(layer.lokr_w2_a) == {"default"}


def test_loha_with_rank_and_alpha_patterns(comfy, wan):
    config = peft.LoHaConfig(
        r=4,
        alpha=8,
        target_modules=COMFY_TARGETS,
        rank_pattern={"ffn.2": 2},
        alpha_pattern={r"cross_attn\.o": 1},
    )
    _check(comfy, wan, _comfy_tree(wan), config, "loha", seed=13, expected=20)


@pytest.mark.parametrize("rslora", [True, False], ids=["use_rslora", "plain"])
def test_lora_on_diffusers_names(comfy, wan, rslora):
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=DIFFUSERS_TARGETS,
        use_rslora=rslora,
        rank_pattern={"to_out.0": 2},
        alpha_pattern={r"ffn\.net\.2": 4},
    )
    model, _ = _check(comfy, wan, _diffusers_tree(wan), config, f"lora_{rslora}", seed=14, expected=20)
    layer = model.get_submodule("base_model.model.blocks.0.attn1.to_q")
    assert layer.scaling["default"] == pytest.approx(8 / 2 if rslora else 8 / 4)
