"""LoHa maths: ΔW = (w1a·w1b) ⊙ (w2a·w2b), its exact low-rank form and Tucker halves."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .lora import reshape_to

ROW_CHUNK_ELEMENTS = 1 << 20  # rows per in-place chunk: ~1 M floats, so both buffers stay in the cache


def half(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """One Hadamard half: ``a·b`` (conv: on the flattened kernel) or the Tucker form.

    Tucker: ``H[p, q, …] = Σ_{i,j} t[i,j,…]·b[j,q]·a[i,p]`` with ``a (r, out)``, ``b (r, in)``.
    """
    if t is None:
        return a @ b.flatten(1)
    return torch.einsum("ij...,jq,ip->pq...", t, b, a)


def delta(w, shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW for a :class:`~.types.LoHaWeights` reshaped to ``shape``."""
    product = half(w.w1a, w.w1b, w.t1) * half(w.w2a, w.w2b, w.t2)
    return reshape_to(product, shape, "LoHa")


def low_rank_factors(w1a, w1b, w2a, w2b) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``ΔW = U·V`` at rank r1·r2 (face-splitting / Khatri–Rao, formats.md §9.2).

    ``U[p, (i,j)] = w1a[p,i]·w2a[p,j]`` (out × r1r2), ``V[(i,j), q] = w1b[i,q]·w2b[j,q]`` (r1r2 × in).
    """
    out, r1, r2 = w1a.shape[0], w1a.shape[1], w2a.shape[1]
    u = (w1a[:, :, None] * w2a[:, None, :]).reshape(out, r1 * r2)
    b1, b2 = w1b.flatten(1), w2b.flatten(1)
    v = (b1[:, None, :] * b2[None, :, :]).reshape(r1 * r2, b1.shape[1])
    return u, v


def low_rank_is_cheaper(w1a, w1b, w2a) -> bool:
    """True when ``U·(V·x)`` costs fewer MACs per token than a dense ``ΔW·x``."""
    out, inp = w1a.shape[0], w1b.flatten(1).shape[1]
    rr = w1a.shape[1] * w2a.shape[1]
    return rr * (inp + out) < inp * out


def bypass_linear(x: torch.Tensor, w1a, w1b, w2a, w2b) -> torch.Tensor:
    """ΔW·x for a Linear layer through the exact low-rank form (dense above the crossover)."""
    if low_rank_is_cheaper(w1a, w1b, w2a):
        u, v = low_rank_factors(w1a, w1b, w2a, w2b)
        return F.linear(F.linear(x, v), u)
    return F.linear(x, (w1a @ w1b) * (w2a @ w2b))


def add_inplace(weight: torch.Tensor, w, coeff: float) -> None:
    """``weight += coeff·ΔW`` in row chunks (two reused buffers), so no full-size temporary is built."""
    view = weight.view(weight.shape[0], -1)
    out, cols = view.shape
    rows = max(1, min(out, ROW_CHUNK_ELEMENTS // max(cols, 1)))
    b1, b2 = w.w1b.flatten(1), w.w2b.flatten(1)
    buf1 = torch.empty(rows, cols, dtype=view.dtype, device=view.device)
    buf2 = torch.empty_like(buf1)
    for start in range(0, out, rows):
        stop = min(out, start + rows)
        h1, h2 = buf1[: stop - start], buf2[: stop - start]
        torch.mm(w.w1a[start:stop], b1, out=h1)
        torch.mm(w.w2a[start:stop], b2, out=h2)
        view[start:stop].addcmul_(h1, h2, value=coeff)
