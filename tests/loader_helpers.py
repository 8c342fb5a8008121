"""Helpers for loader tests: random adapter factors for a target shape, patched weights, file writing."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from hadakron.adapters import lokr_shapes


def factors(algo: str, out: int, inp: int, rank: int = 4, gen=None, full_lokr=False) -> dict[str, torch.Tensor]:
    """Role-suffix -> tensor for a Linear (out, in) module; LyCORIS/kohya suffixes."""

    def r(*s):
        return torch.randn(*s, generator=gen) * 0.2

    if algo == "lora":
        return {".lora_up.weight": r(out, rank), ".lora_down.weight": r(rank, inp)}
    if algo == "loha":
        return {
            ".hada_w1_a": r(out, rank),
            ".hada_w1_b": r(rank, inp),
            ".hada_w2_a": r(out, rank),
            ".hada_w2_b": r(rank, inp),
        }
    (out_l, in_m), (out_k, in_n) = lokr_shapes(out, inp, -1)
    if full_lokr:
        return {".lokr_w1": r(out_l, in_m), ".lokr_w2": r(out_k, in_n)}
    return {".lokr_w1": r(out_l, in_m), ".lokr_w2_a": r(out_k, rank), ".lokr_w2_b": r(rank, in_n)}


def dense(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference ΔW from role tensors, by the textbook formulas."""
    if ".lora_up.weight" in parts:
        return parts[".lora_up.weight"] @ parts[".lora_down.weight"]
    if ".lora_B.weight" in parts:
        return parts[".lora_B.weight"] @ parts[".lora_A.weight"]
    if ".hada_w1_a" in parts:
        return (parts[".hada_w1_a"] @ parts[".hada_w1_b"]) * (parts[".hada_w2_a"] @ parts[".hada_w2_b"])
    w2 = parts.get(".lokr_w2")
    if w2 is None:
        w2 = parts[".lokr_w2_a"] @ parts[".lokr_w2_b"]
    return torch.kron(parts[".lokr_w1"], w2)


def rank_of(parts) -> int | None:
    for key in (".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".lokr_w2_b"):
        if key in parts:
            return parts[key].shape[0]
    return None


def write_adapter(
    folder: Path, name: str, tensors: dict, metadata: dict | None = None, peft_config: dict | None = None
) -> str:
    """Save into a loras folder; returns the name relative to it."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target), metadata=metadata)
    if peft_config is not None:
        (target.parent / "adapter_config.json").write_text(json.dumps(peft_config))
    return name


def patched(model_patcher, key: str) -> torch.Tensor:
    """The weight ComfyUI would bake for ``key`` (both versions: calculate_weight on an fp32 copy)."""
    import comfy.lora

    weight = model_patcher.model.state_dict()[key].float().clone()
    return comfy.lora.calculate_weight(model_patcher.patches.get(key, []), weight, key)


def base(model_patcher, key: str) -> torch.Tensor:
    return model_patcher.model.state_dict()[key].float().clone()
