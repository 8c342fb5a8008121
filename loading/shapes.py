"""Cheap shape facts about an adapter module (no ΔW is built)."""

from __future__ import annotations

import math

from ..adapters import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights, lokr_shapes


def delta_rows_and_numel(w) -> tuple[int, int]:
    """``(rows, numel)`` of the ΔW a module produces, read from factor shapes."""
    if isinstance(w, LoRAWeights):
        cols = w.down.flatten(1).shape[1] if w.mid is None else w.down.shape[1] * math.prod(w.mid.shape[2:])
        return int(w.up.shape[0]), int(w.up.shape[0] * cols)
    if isinstance(w, LoHaWeights):
        if w.t1 is not None:
            rows = int(w.w1a.shape[1])
            return rows, rows * int(w.w1b.shape[1]) * math.prod(w.t1.shape[2:])
        return int(w.w1a.shape[0]), int(w.w1a.shape[0] * w.w1b.flatten(1).shape[1])
    if isinstance(w, LoKrWeights):
        out_l, in_m = w.w1_shape()
        if w.w2 is not None:
            w2_numel = w.w2.numel()
        elif w.t2 is not None:
            w2_numel = w.w2a.shape[1] * w.w2b.shape[1] * math.prod(w.t2.shape[2:])
        else:
            w2_numel = w.w2a.shape[0] * w.w2b.flatten(1).shape[1]
        return out_l * w.w2_out(), int(out_l * in_m * w2_numel)
    if isinstance(w, FullWeights):
        return int(w.tensor.shape[0]) if w.tensor.dim() else 1, int(w.tensor.numel())
    raise TypeError(type(w))


def fits(w, target_shape: tuple[int, ...]) -> bool:
    """True if the module's ΔW has the target's row count and element count."""
    rows, numel = delta_rows_and_numel(w)
    if isinstance(w, FullWeights):
        return numel == math.prod(target_shape)
    return rows == target_shape[0] and numel == math.prod(target_shape)


def implied_lokr_factor(w: LoKrWeights, target_shape: tuple[int, ...]) -> str:
    """Which LyCORIS ``factor`` produces this module's w1 shape for ``target_shape`` ("-1", "4", "custom")."""
    out_dim, in_dim = target_shape[0], target_shape[1]
    actual = w.w1_shape()
    for factor in (-1, min(actual), max(actual)):
        (out_l, in_m), _ = lokr_shapes(out_dim, in_dim, factor)
        if (out_l, in_m) == actual:
            return str(factor)
    return "custom (w1 larger or unbalanced layout)"
