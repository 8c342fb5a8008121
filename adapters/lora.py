"""LoRA / LoCon maths: ΔW = up · down (LoCon Tucker: up · mid · down)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.errors import ShapeMismatchError


def delta(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW for a Linear ``(out, in)`` or Conv ``(out, in, k…)`` weight.

    Without ``mid`` the kernel lives in ``down`` (``(r, in, k…)``) and ``up`` is 1×1; with a Tucker
    ``mid`` ``(r, r, k…)``: ``ΔW[o, i, …] = Σ up[o,a]·mid[a,b,…]·down[b,i]``.
    """
    up2, down2 = up.flatten(1), down.flatten(1)
    if mid is None:
        result = up2 @ down2
    else:
        result = torch.einsum("ab...,oa,bi->oi...", mid, up2, down2)
    return reshape_to(result, shape, "LoRA")


def reshape_to(result: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Reshape a computed ΔW to the target weight shape or raise a clear shape error."""
    if result.numel() != _numel(shape):
        raise ShapeMismatchError(f"{what} ΔW has shape {tuple(result.shape)}, the weight is {tuple(shape)}")
    return result.reshape(shape)


def bypass_linear(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """``up · (down · x)`` for Linear layers, never forming ΔW."""
    return F.linear(F.linear(x, down.flatten(1)), up.flatten(1))


def add_inplace(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, coeff: float) -> None:
    """``weight += coeff · up·down`` via one BLAS ``addmm_`` (no temporary ΔW)."""
    view = weight.view(weight.shape[0], -1)
    view.addmm_(up.flatten(1), down.flatten(1), alpha=coeff)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
