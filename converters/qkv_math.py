"""QKV fuse and split maths (formats.md §11): exact block forms for LoRA/LoHa/LoKr, optimal LoKr -> LoRA.

A fused weight is ``vstack(W_q, W_k, W_v)``. Every function returns the tensors of one output module
keyed by their role suffix (``.lora_up.weight`` …, ``.alpha``), in the dtype of the input factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import LoHaWeights, LoKrWeights, LoRAWeights, ModuleAdapter, portable_full_lokr_alpha
from ..common.errors import UnsupportedError
from ..merge.lowrank import LowRank, Truncation, exact_lowrank, stack_rows, truncate
from .alphas import alpha_tensor
from .kronfuse import applicable, kron_part, stacked_truncate

DENSE_LIMIT = 1 << 26  # generic path in fp64 while K·in stays below this many values


@dataclass
class Part:
    """One of q/k/v: its adapter (``None`` when the file has no such module), scale and stored alpha."""

    adapter: ModuleAdapter | None
    gamma: float = 1.0
    alpha: torch.Tensor | None = None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-30)


def _scaled(t: torch.Tensor, factor: float) -> torch.Tensor:
    if _close(factor, 1.0):
        return t
    return (t.float() * factor).to(t.dtype)


def _fused_alpha(parts: list[Part], ranks: list[int]) -> tuple[torch.Tensor, list[float]]:
    """Alpha of the fused module and the factor folded into each part's first factor.

    Equal γ: ``alpha = γ·Σr`` (musubi: q's alpha × 3, computed on q's alpha tensor); otherwise each γᵢ
    is folded into its block and ``alpha = Σr`` (scale 1).
    """
    present = [(p, r) for p, r in zip(parts, ranks, strict=True) if p.adapter is not None]
    total = sum(ranks)
    gammas = [p.gamma for p, _ in present]
    if all(_close(g, gammas[0]) for g in gammas):
        first, r0 = present[0]
        if first.alpha is not None and _close(float(first.alpha) / r0, gammas[0]):
            return (first.alpha.float() * (total / r0)).to(first.alpha.dtype).reshape(()), [1.0] * len(parts)
        return alpha_tensor(gammas[0] * total), [1.0] * len(parts)
    return alpha_tensor(total), [p.gamma if p.adapter is not None else 1.0 for p in parts]


def fuse_lora(parts: list[Part], rows: int, cols: int) -> dict[str, torch.Tensor]:
    """Exact LoRA fuse: ``down = vstack(Aᵢ)``, ``up = blockdiag(Bᵢ)`` (missing parts: zero rows)."""
    ws = [p.adapter.weights if p.adapter else None for p in parts]
    if any(w is not None and w.mid is not None for w in ws):
        raise UnsupportedError("LoCon Tucker (lora_mid) q/k/v cannot be fused")
    ref = next(w for w in ws if w is not None)
    ranks = [w.rank if w is not None else 0 for w in ws]
    alpha, folds = _fused_alpha(parts, ranks)
    ups = [
        _scaled(w.up.flatten(1), f) if w is not None else ref.up.new_zeros(rows, 0)
        for w, f in zip(ws, folds, strict=True)
    ]
    downs = [w.down.flatten(1) for w in ws if w is not None]
    return {".lora_up.weight": torch.block_diag(*ups), ".lora_down.weight": torch.cat(downs, 0), ".alpha": alpha}


def fuse_loha(parts: list[Part], rows: int, cols: int) -> dict[str, torch.Tensor]:
    """Exact LoHa fuse: ``w*_a = blockdiag``, ``w*_b = vstack`` (row-stack of Hadamard products)."""
    ws = [p.adapter.weights if p.adapter else None for p in parts]
    if any(w is not None and w.t1 is not None for w in ws):
        raise UnsupportedError("LoHa Tucker q/k/v cannot be fused")
    ref = next(w for w in ws if w is not None)
    ranks = [w.rank if w is not None else 0 for w in ws]
    alpha, folds = _fused_alpha(parts, ranks)

    def blocks(name: str, fold: bool) -> torch.Tensor:
        items = []
        for w, f in zip(ws, folds, strict=True):
            if w is None:
                items.append(getattr(ref, name).new_zeros(rows, 0))
            else:
                items.append(_scaled(getattr(w, name), f) if fold else getattr(w, name))
        return torch.block_diag(*items)

    return {
        ".hada_w1_a": blocks("w1a", True),
        ".hada_w1_b": torch.cat([w.w1b for w in ws if w is not None], 0),
        ".hada_w2_a": blocks("w2a", False),
        ".hada_w2_b": torch.cat([w.w2b for w in ws if w is not None], 0),
        ".alpha": alpha,
    }


def _part_lowrank(part: Part, rows: int, cols: int, dtype: torch.dtype) -> LowRank:
    if part.adapter is None:
        return LowRank(torch.zeros(rows, 0, dtype=dtype), torch.zeros(0, cols, dtype=dtype))
    return exact_lowrank(part.adapter, (rows, cols), part.gamma, dtype=dtype)


def fuse_to_lora(
    parts: list[Part], rows: int, cols: int, rank: int | None, energy: float | None
) -> tuple[dict[str, torch.Tensor], Truncation, int]:
    """Optimal LoRA of ``vstack(γᵢ·ΔWᵢ)`` at ``rank`` (or the smallest rank keeping ``energy``).

    LoKr parts use :mod:`.kronfuse` (no dense matrix); anything else the exact low-rank forms with a
    thin QR + small SVD. Returns ``(tensors, truncation, exact rank)``; ``alpha = k`` (scale 1).
    """
    dtype = _factor_dtype(parts)
    kron = [kron_part(p.adapter.weights, p.gamma) if _is_lokr(p) else None for p in parts]
    if all(k is not None or p.adapter is None for k, p in zip(kron, parts, strict=True)) and applicable(kron, cols):
        result, exact = stacked_truncate(kron, [rows] * len(parts), cols, rank, energy)
    else:
        inner = sum(_inner(p) for p in parts)
        work = torch.float64 if inner * cols <= DENSE_LIMIT else torch.float32
        stacked = stack_rows([_part_lowrank(p, rows, cols, work) for p in parts])
        result = truncate(stacked, rank, energy)
        exact = min(stacked.rank, rows * len(parts), cols)  # an upper bound (the exact form's inner size)
    lr = result.lowrank
    if result.rank == 0:  # an all-zero ΔW: one zero rank keeps the file readable everywhere
        lr = LowRank(torch.zeros(lr.up.shape[0], 1), torch.zeros(1, cols))
    tensors = {
        ".lora_up.weight": lr.up.to(dtype).contiguous(),
        ".lora_down.weight": lr.down.to(dtype).contiguous(),
        ".alpha": alpha_tensor(max(result.rank, 1)),
    }
    return tensors, result, exact


def _is_lokr(part: Part) -> bool:
    return part.adapter is not None and isinstance(part.adapter.weights, LoKrWeights)


def _inner(part: Part) -> int:
    if part.adapter is None:
        return 0
    w = part.adapter.weights
    if isinstance(w, LoRAWeights):
        return w.rank
    if isinstance(w, LoHaWeights):
        return int(w.w1a.shape[-1] * w.w2a.shape[-1])
    return 1 << 12


def _factor_dtype(parts: list[Part]) -> torch.dtype:
    """The dtype of the first present part's first factor (musubi: q's ``lokr_w1``)."""
    for p in parts:
        if p.adapter is not None:
            w = p.adapter.weights
            for value in vars(w).values():
                if isinstance(value, torch.Tensor):
                    return value.dtype
    return torch.float32


# ------------------------------------------------------------------------------------------- split


def _equal_blocks(up: torch.Tensor, count: int) -> bool:
    """``up`` is block-diagonal with ``count`` equal row and column blocks."""
    rows, cols = up.shape[0] // count, up.shape[1] // count
    if up.shape[1] % count or up.shape[0] % count:
        return False
    mask = torch.ones_like(up, dtype=torch.bool)
    for i in range(count):
        mask[i * rows : (i + 1) * rows, i * cols : (i + 1) * cols] = False
    return not bool(up[mask].any())


def split_lora(w: LoRAWeights, alpha: torch.Tensor | None, count: int = 3) -> list[dict[str, torch.Tensor]]:
    """Split a fused LoRA by rows: ``up`` rows per part and ``down`` whole, same alpha; when ``up`` is
    block-diagonal the rank is split too (alpha divided in proportion, as musubi's ``--reverse``)."""
    if w.mid is not None:
        raise UnsupportedError("LoCon Tucker (lora_mid) cannot be split")
    up, down = w.up.flatten(1), w.down.flatten(1)
    rows = up.shape[0] // count
    blocky = _equal_blocks(up, count)
    inner = up.shape[1] // count
    out = []
    for i in range(count):
        part_up = up[i * rows : (i + 1) * rows]
        if blocky:
            cols = slice(i * inner, (i + 1) * inner)
            item = {".lora_up.weight": part_up[:, cols], ".lora_down.weight": down[cols]}
            if alpha is not None:
                item[".alpha"] = alpha / count
        else:
            item = {".lora_up.weight": part_up, ".lora_down.weight": down}
            if alpha is not None:
                item[".alpha"] = alpha
        out.append({k: v.contiguous() for k, v in item.items()})
    return out


def split_loha(w: LoHaWeights, alpha: torch.Tensor | None, count: int = 3) -> list[dict[str, torch.Tensor]]:
    """Split a fused LoHa: rows of ``w1_a``/``w2_a``, ``w1_b``/``w2_b`` whole (shrunk when block-diagonal)."""
    if w.t1 is not None:
        raise UnsupportedError("LoHa Tucker cannot be split")
    rows = w.w1a.shape[0] // count
    blocky = _equal_blocks(w.w1a, count) and _equal_blocks(w.w2a, count)
    r1, r2 = w.w1a.shape[1] // count, w.w2a.shape[1] // count
    out = []
    for i in range(count):
        a1, a2 = w.w1a[i * rows : (i + 1) * rows], w.w2a[i * rows : (i + 1) * rows]
        if blocky:
            c1, c2 = slice(i * r1, (i + 1) * r1), slice(i * r2, (i + 1) * r2)
            item = {".hada_w1_a": a1[:, c1], ".hada_w1_b": w.w1b[c1], ".hada_w2_a": a2[:, c2], ".hada_w2_b": w.w2b[c2]}
        else:
            item = {".hada_w1_a": a1, ".hada_w1_b": w.w1b, ".hada_w2_a": a2, ".hada_w2_b": w.w2b}
        if alpha is not None:
            item[".alpha"] = alpha / count if blocky else alpha
        out.append({k: v.contiguous() for k, v in item.items()})
    return out


def lokr_splits_exactly(w: LoKrWeights, count: int = 3) -> bool:
    """A fused LoKr splits into LoKr parts iff ``count`` divides the rows of ``w1`` (formats.md §11)."""
    return w.w1_shape()[0] % count == 0


def split_lokr(w: LoKrWeights, alpha: torch.Tensor | None, count: int = 3) -> list[dict[str, torch.Tensor]]:
    """Exact LoKr split: part i is ``kron(w1[rows_i], w2)``; full-matrix parts get the portable alpha."""
    out_l = w.w1_shape()[0]
    rows = out_l // count
    w2_keys = {".lokr_w2": w.w2, ".lokr_w2_a": w.w2a, ".lokr_w2_b": w.w2b, ".lokr_t2": w.t2}
    out = []
    for i in range(count):
        sl = slice(i * rows, (i + 1) * rows)
        item = {k: v for k, v in w2_keys.items() if v is not None}
        if w.w1 is not None:
            item[".lokr_w1"] = w.w1[sl]
        else:
            item[".lokr_w1_a"], item[".lokr_w1_b"] = w.w1a[sl], w.w1b
        if w.is_full:
            item[".alpha"] = alpha_tensor(portable_full_lokr_alpha(rows, int(w.w2.shape[0])))
        elif alpha is not None:
            item[".alpha"] = alpha
        out.append({k: v.contiguous() for k, v in item.items()})
    return out


def split_to_lora(
    adapter: ModuleAdapter, gamma: float, shape: tuple, rank: int | None, energy: float | None, count: int = 3
) -> list[tuple[dict[str, torch.Tensor], Truncation, int]]:
    """Split any fused module into LoRA parts: the exact form's ``up`` rows per part, each truncated."""
    dtype = _factor_dtype([Part(adapter)])
    exact = exact_lowrank(adapter, shape, gamma, dtype=torch.float64)
    rows = shape[0] // count
    results = []
    for i in range(count):
        part = LowRank(exact.up[i * rows : (i + 1) * rows], exact.down)
        result, full = truncate(part, rank, energy), min(part.rank, rows, part.down.shape[1])
        tensors = {
            ".lora_up.weight": result.lowrank.up.to(dtype).contiguous(),
            ".lora_down.weight": result.lowrank.down.to(dtype).contiguous(),
            ".alpha": alpha_tensor(result.rank),
        }
        results.append((tensors, result, full))
    return results
