"""LoKr maths: ΔW = kron(w1, w2), the Kronecker-identity forward and an in-place broadcast update."""

from __future__ import annotations

import torch

from ..common.errors import ShapeMismatchError
from .lora import reshape_to


def w2_full(w, shape: tuple[int, ...]) -> torch.Tensor:
    """The full ``w2`` factor ``(out_k, in_n[, k…])`` for a target weight of ``shape``."""
    if w.w2 is not None:
        return w.w2
    if w.t2 is not None:
        return torch.einsum("ij...,ip,jr->pr...", w.t2, w.w2a, w.w2b).contiguous()
    product = w.w2a @ w.w2b.flatten(1)
    kernel = tuple(shape[2:])
    if kernel:
        return product.reshape(product.shape[0], -1, *kernel)
    return product


def delta(w, shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW for :class:`~.types.LoKrWeights`; for convs ``w1`` is padded with **trailing** 1s.

    (ComfyUI pads only for 4-D weights; ``torch.kron`` left-pads otherwise and silently mixes
    up the element order of Conv1d/Conv3d deltas.)
    """
    w1 = w.w1_full()
    w2 = w2_full(w, shape)
    w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - w1.dim())))
    return reshape_to(torch.kron(w1, w2), shape, "LoKr")


def bypass_linear(x: torch.Tensor, w) -> torch.Tensor:
    """ΔW·x via ``kron(A, B)·vec(X) = vec(A·X·Bᵀ)`` (formats.md §9.1); ΔW is never formed.

    Args:
        x: ``(..., in)`` with ``in = in_m·in_n``.
        w: :class:`~.types.LoKrWeights` of a Linear layer.
    """
    w1 = w.w1_full()
    out_l, in_m = w1.shape
    lead = x.shape[:-1]
    xs = x.reshape(*lead, in_m, -1)
    if w.w2 is not None:
        z = xs @ w.w2.t()
    else:
        z = (xs @ w.w2b.t()) @ w.w2a.t()
    y = torch.matmul(w1, z)
    return y.reshape(*lead, out_l * y.shape[-1])


def add_inplace(weight: torch.Tensor, w, coeff: float) -> None:
    """``weight += coeff·kron(w1, w2)`` as one broadcast ``addcmul_`` over a 4-D view.

    The weight ``(out_l·out_k, in_m·in_n, k…)`` is viewed as ``(out_l, out_k, in_m, in_n, k…)``;
    ``w1`` broadcasts over the inner block and ``w2`` over the outer one, so the update streams
    through the weight once and never materialises ΔW.
    """
    shape = tuple(weight.shape)
    w1 = w.w1_full()
    out_l, in_m = w1.shape
    w2 = w2_full(w, shape)
    out_k, in_n, kernel = w2.shape[0], w2.shape[1], tuple(w2.shape[2:])
    if out_l * out_k != shape[0] or in_m * in_n * _numel(kernel) != _numel(shape[1:]):
        raise ShapeMismatchError(f"LoKr kron({tuple(w1.shape)}, {tuple(w2.shape)}) does not fit {shape}")
    ones = (1,) * len(kernel)
    view = weight.view(out_l, out_k, in_m, in_n, *kernel)
    view.addcmul_(w1.reshape(out_l, 1, in_m, 1, *ones), w2.reshape(1, out_k, 1, in_n, *kernel), value=coeff)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
