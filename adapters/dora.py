"""DoRA (weight-decomposed) application with each producer's semantics (formats.md §15)."""

from __future__ import annotations

import torch


def apply(
    weight: torch.Tensor, scaled_delta: torch.Tensor, magnitude: torch.Tensor, strength: float, kind: str = "lycoris"
) -> torch.Tensor:
    """Return the DoRA-patched weight.

    Args:
        weight: base weight ``W`` (fp32).
        scaled_delta: ``γ·ΔW`` (without the user strength for ``lycoris``; see below).
        magnitude: ``dora_scale`` (LyCORIS: ``(out, 1, …)`` output axis or ``(1, in, …)``) or PEFT's
            ``lora_magnitude_vector`` ``(out,)``.
        strength: user strength μ.
        kind: ``lycoris`` — ``W' = (W+γΔW)·(μ(s−1)+1)``, ``s = m/‖W+γΔW‖`` (μ only interpolates the
            rescale); ``peft`` — ``W' = m·(W+μγΔW)/‖W+μγΔW‖`` per output row.
    """
    if kind == "peft":
        merged = weight + strength * scaled_delta
        norm = _norm(merged, output_axis=True)
        return merged * (magnitude.reshape(norm.shape) / norm)
    merged = weight + scaled_delta
    output_axis = magnitude.shape[0] == weight.shape[0] and (magnitude.dim() < 2 or magnitude.shape[1] == 1)
    norm = _norm(merged, output_axis)
    rescale = magnitude.reshape(norm.shape) / norm
    return merged * (strength * (rescale - 1) + 1)


def _norm(w: torch.Tensor, output_axis: bool) -> torch.Tensor:
    # LyCORIS adds the dtype's eps to the norm; doing the same keeps results bit-for-bit comparable.
    dims = tuple(range(1, w.dim())) if output_axis else (0, *range(2, w.dim()))
    return w.norm(dim=dims, keepdim=True) + torch.finfo(w.dtype).eps
