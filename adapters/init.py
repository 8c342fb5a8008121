"""Trainable initialisation (LyCORIS column of formats.md §8): ΔW is exactly zero at step 0."""

from __future__ import annotations

import math

import torch

from .factorization import lokr_shapes
from .types import LoHaWeights, LoKrWeights, LoRAWeights


def _kaiming(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    t = torch.empty(shape)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform with a = sqrt(5)
    return t.uniform_(-bound, bound, generator=generator)


def init_lora(
    out_dim: int, in_dim: int, rank: int, kernel: tuple[int, ...] = (), generator: torch.Generator | None = None
) -> LoRAWeights:
    """LoRA/LoCon: down Kaiming-uniform, up zero (``up (out, r, 1…)``, ``down (r, in, k…)``)."""
    ones = (1,) * len(kernel)
    return LoRAWeights(up=torch.zeros(out_dim, rank, *ones), down=_kaiming((rank, in_dim, *kernel), generator))


def init_loha(
    out_dim: int, in_dim: int, rank: int, kernel: tuple[int, ...] = (), generator: torch.Generator | None = None
) -> LoHaWeights:
    """LoHa: w1_a N(0, 0.1), w1_b N(0, 1), **w2_a = 0**, w2_b N(0, 1)."""
    cols = in_dim * math.prod(kernel)
    return LoHaWeights(
        w1a=torch.randn(out_dim, rank, generator=generator) * 0.1,
        w1b=torch.randn(rank, cols, generator=generator),
        w2a=torch.zeros(out_dim, rank),
        w2b=torch.randn(rank, cols, generator=generator),
    )


def lokr_mode(
    out_dim: int, in_dim: int, rank: int, factor: int = -1, decompose_both: bool = False, full_matrix: bool = False
) -> tuple[bool, bool]:
    """``(w1_low_rank, w2_low_rank)`` with LyCORIS' thresholds (r < max(dims)/2)."""
    (out_l, in_m), (out_k, in_n) = lokr_shapes(out_dim, in_dim, factor)
    w2_low = not full_matrix and rank < max(out_k, in_n) / 2
    w1_low = decompose_both and rank < max(out_l, in_m) / 2
    return w1_low, w2_low


def init_lokr(
    out_dim: int,
    in_dim: int,
    rank: int,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    kernel: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> LoKrWeights:
    """LoKr in the LyCORIS layout: w1 (and w2_a) Kaiming, **w2_b = 0** (full w2 = 0)."""
    (out_l, in_m), (out_k, in_n) = lokr_shapes(out_dim, in_dim, factor)
    w1_low, w2_low = lokr_mode(out_dim, in_dim, rank, factor, decompose_both, full_matrix)
    w = LoKrWeights()
    if w1_low:
        w.w1a, w.w1b = _kaiming((out_l, rank), generator), _kaiming((rank, in_m), generator)
    else:
        w.w1 = _kaiming((out_l, in_m), generator)
    if w2_low:
        w.w2a = _kaiming((out_k, rank), generator)
        w.w2b = torch.zeros(rank, in_n * math.prod(kernel))
    else:
        w.w2 = torch.zeros(out_k, in_n, *kernel)
    return w
