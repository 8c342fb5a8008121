"""Exact low-rank forms of adapter deltas and their optimal truncation (formats.md §9.2, §10, §11).

Every ΔW here is the *flattened* matrix ``(out, in·∏kernel)`` (the layout ComfyUI and LyCORIS use for
conv weights), written as ``up @ down``:

* :func:`exact_lowrank` — LoRA (LoCon Tucker folded into ``down``), LoHa (face-splitting form, rank
  r1·r2), LoKr (SVDs of its two small factors; ``up`` has orthogonal columns), full diffs;
* :func:`stack_rows` / :func:`add` — row-stacked (QKV fusion) and weighted sums, still exact;
* :func:`truncate` — Eckart–Young optimal truncation through thin QRs and an SVD of the small core
  (never a dense out×in SVD); :func:`lokr_truncate` — the same for one LoKr straight from the
  products of its factors' singular values.

Pure torch; no ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters.types import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights, ModuleAdapter
from ..common.errors import ConventionError, ShapeMismatchError, UnsupportedError


@dataclass
class LowRank:
    """``ΔW ≈ up @ down`` on the flattened weight.

    Attributes:
        up: ``(out, k)``.
        down: ``(k, in_flat)`` with ``in_flat = in·∏kernel``.
        orthogonal_up: the columns of ``up`` are known to be mutually orthogonal (LoKr exact forms,
            and row-stacks of them); :func:`truncate` then skips the QR of ``up``.
    """

    up: torch.Tensor
    down: torch.Tensor
    orthogonal_up: bool = False

    @property
    def rank(self) -> int:
        """Inner dimension ``k``."""
        return int(self.up.shape[1])

    def dense(self) -> torch.Tensor:
        """The flattened ``(out, in_flat)`` ΔW (for tests and small layers)."""
        return self.up @ self.down


@dataclass
class Truncation:
    """An optimal rank-``rank`` approximation and what it cost.

    Attributes:
        lowrank: ``up = U_k·√S_k``, ``down = √S_k·V_kᵀ`` (musubi's split).
        rank: kept rank ``k``.
        kept_energy: ``Σ_kept σ² / Σ σ²`` (1 for an all-zero ΔW).
        rel_error: ``‖ΔW − ΔW_k‖_F / ‖ΔW‖_F`` from the dropped singular values.
        total_energy: ``‖ΔW‖²_F = Σ σ²`` (to weight per-layer figures into an overall one).
    """

    lowrank: LowRank
    rank: int
    kept_energy: float
    rel_error: float
    total_energy: float = 0.0


# --------------------------------------------------------------------------------------------- exact


def exact_lowrank(
    adapter: ModuleAdapter, shape: tuple, scale: float = 1.0, dtype: torch.dtype = torch.float32
) -> LowRank:
    """Exact ``up @ down == scale·ΔW.reshape(out, -1)`` for one module (computed in ``dtype``).

    Args:
        adapter: a parsed module (LoRA/LoCon, LoHa, LoKr or a full ``diff``).
        shape: the target weight's shape ``(out, in, k…)``.
        scale: folded into ``up`` (γ·strength).
        dtype: compute dtype (fp32 by default; fp64 for references).

    Raises:
        ShapeMismatchError: the factors do not fit ``shape``.
        UnsupportedError: ``set_weight``/bias patches (no ΔW of the weight).
    """
    w = adapter.to(dtype=dtype).weights
    shape = tuple(int(d) for d in shape)
    if isinstance(w, LoRAWeights):
        result = LowRank(w.up.flatten(1), _lora_down(w))
    elif isinstance(w, LoHaWeights):
        result = _loha_lowrank(w)
    elif isinstance(w, LoKrWeights):
        result = _lokr_lowrank(w, shape)
    elif isinstance(w, FullWeights):
        result = _full_lowrank(w, shape)
    else:  # pragma: no cover - every parsed algorithm is handled above
        raise UnsupportedError(f"no low-rank form for algorithm {adapter.algo!r}")
    _check_fits(result, shape, adapter)
    return _scaled(result, scale)


def _lora_down(w: LoRAWeights) -> torch.Tensor:
    """``down`` flattened; a LoCon Tucker ``mid (r, r, k…)`` is folded in: ``D[a,(i,k)] = Σ_b mid·down``."""
    down2 = w.down.flatten(1)
    if w.mid is None:
        return down2
    return torch.einsum("ab...,bi->ai...", w.mid, down2).flatten(1)


def _loha_half(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Hadamard half as ``(A (out, r), B (r, in_flat))``; Tucker: ``A = aᵀ``, ``B = Σ_j t[i,j,…]·b[j,q]``."""
    if t is None:
        return a, b.flatten(1)
    return a.t(), torch.einsum("ij...,jq->iq...", t, b).flatten(1)


def _loha_lowrank(w: LoHaWeights) -> LowRank:
    """Face-splitting form (formats.md §9.2): ``U[p,(i,j)] = A1[p,i]·A2[p,j]``, ``V = B1 ⊙ₖᵣ B2``."""
    from ..adapters.loha import low_rank_factors

    a1, b1 = _loha_half(w.w1a, w.w1b, w.t1)
    a2, b2 = _loha_half(w.w2a, w.w2b, w.t2)
    up, down = low_rank_factors(a1, b1, a2, b2)
    return LowRank(up, down)


def _lokr_factors(w: LoKrWeights) -> tuple[tuple, tuple]:
    """``w1`` and flattened ``w2`` each as ``(full, None)`` or a product ``(A, B)``."""
    first = (w.w1, None) if w.w1 is not None else (w.w1a, w.w1b)
    if w.w2 is not None:
        second = (w.w2.flatten(1), None)
    elif w.t2 is not None:  # w2[p,(r,k)] = Σ_i w2a[i,p]·(Σ_j t2[i,j,k]·w2b[j,r])
        second = (w.w2a.t(), torch.einsum("ij...,jr->ir...", w.t2, w.w2b).flatten(1))
    else:
        second = (w.w2a, w.w2b.flatten(1))
    return first, second


def factor_svd(a: torch.Tensor, b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(U, S, V)`` of ``a`` (or of the product ``a @ b`` via QRs), zero σ dropped.

    For a product the out×in matrix is never formed: ``a = Qa·Ra``, ``bᵀ = Qb·Rb``,
    ``Ra·Rbᵀ = Uc·S·Vcᵀ``, so ``U = Qa·Uc`` and ``V = Qb·Vc``.
    """
    if b is None:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        v = vh.t()
    else:
        qa, ra = torch.linalg.qr(a)
        qb, rb = torch.linalg.qr(b.t())
        uc, s, vch = torch.linalg.svd(ra @ rb.t(), full_matrices=False)
        u, v = qa @ uc, qb @ vch.t()
    keep = int((s > _zero_tol(s, a.shape[0], (b if b is not None else a).shape[1])).sum())
    return u[:, :keep], s[:keep], v[:, :keep]


def _zero_tol(s: torch.Tensor, m: int, n: int) -> float:
    """Singular values at or below this count as zero (LAPACK's rank rule)."""
    if s.numel() == 0:
        return 0.0
    return float(s.max()) * max(m, n) * torch.finfo(s.dtype).eps


def _lokr_lowrank(w: LoKrWeights, shape: tuple) -> LowRank:
    """``kron(w1, w2) = kron(U1S1, U2S2)·kron(V1, V2)ᵀ`` (``up`` has orthogonal columns)."""
    (u1, s1, v1), (u2, s2, v2) = (factor_svd(*f) for f in _lokr_factors(w))
    up = _kron2(u1 * s1, u2 * s2)
    down = _kron2(v1.t(), v2.t())
    return LowRank(up, down, orthogonal_up=True)


def _kron2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2-D Kronecker product by broadcasting (``torch.kron`` rejects some non-contiguous inputs)."""
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def _full_lowrank(w: FullWeights, shape: tuple) -> LowRank:
    """A full ``diff`` as ``I @ D`` or ``D @ I`` (inner size ``min(out, in_flat)``)."""
    if w.kind != "diff" or w.on_bias:
        raise UnsupportedError(f"a full {'bias ' if w.on_bias else ''}{w.kind} patch has no low-rank form of ΔW")
    d = w.delta(shape).reshape(shape[0], -1)
    out, cols = d.shape
    if out <= cols:
        return LowRank(torch.eye(out, dtype=d.dtype, device=d.device), d, orthogonal_up=True)
    return LowRank(d, torch.eye(cols, dtype=d.dtype, device=d.device))


def _check_fits(lr: LowRank, shape: tuple, adapter: ModuleAdapter) -> None:
    out, cols = shape[0], math.prod(shape[1:])
    if lr.up.shape[0] != out or lr.down.shape[1] != cols:
        raise ShapeMismatchError(
            f"{adapter.name}: {adapter.algo} ΔW is {lr.up.shape[0]}×{lr.down.shape[1]}, the weight is {shape}"
        )


def _scaled(lr: LowRank, scale: float) -> LowRank:
    if scale == 1.0:
        return lr
    return LowRank(lr.up * scale, lr.down, lr.orthogonal_up)


# ------------------------------------------------------------------------------------------ combine


def stack_rows(parts: list[LowRank]) -> LowRank:
    """``vstack(ΔW_i)`` exactly: ``up = blockdiag(up_i)``, ``down = vstack(down_i)`` (QKV fusion, §11)."""
    if not parts:
        raise ShapeMismatchError("stack_rows needs at least one part")
    _same_width(parts)
    dtype = _common_dtype(parts)
    up = torch.block_diag(*(p.up.to(dtype) for p in parts))
    down = torch.cat([p.down.to(dtype) for p in parts], dim=0)
    return LowRank(up, down, orthogonal_up=all(p.orthogonal_up for p in parts))


def add(parts: list[LowRank], weights: list[float] | None = None) -> LowRank:
    """``Σ w_i·ΔW_i`` exactly: ``up = hstack(w_i·up_i)``, ``down = vstack(down_i)``; ``w_i = 0`` drops a term."""
    if not parts:
        raise ShapeMismatchError("add needs at least one part")
    weights = [1.0] * len(parts) if weights is None else [float(x) for x in weights]
    if len(weights) != len(parts):
        raise ConventionError(f"{len(weights)} weights for {len(parts)} parts")
    _same_width(parts)
    if any(p.up.shape[0] != parts[0].up.shape[0] for p in parts):
        raise ShapeMismatchError("add: parts have different numbers of rows")
    dtype = _common_dtype(parts)
    kept = [(p, wt) for p, wt in zip(parts, weights, strict=True) if wt != 0.0]
    if not kept:
        first = parts[0]
        return LowRank(
            first.up.new_zeros(first.up.shape[0], 0, dtype=dtype),
            first.down.new_zeros(0, first.down.shape[1], dtype=dtype),
        )
    up = torch.cat([p.up.to(dtype) * wt for p, wt in kept], dim=1)
    down = torch.cat([p.down.to(dtype) for p, _ in kept], dim=0)
    return LowRank(up, down, orthogonal_up=len(kept) == 1 and kept[0][0].orthogonal_up)


def _same_width(parts: list[LowRank]) -> None:
    cols = {int(p.down.shape[1]) for p in parts}
    if len(cols) > 1:
        raise ShapeMismatchError(f"parts have different input widths {sorted(cols)}")


def _common_dtype(parts: list[LowRank]) -> torch.dtype:
    dtype = parts[0].up.dtype
    for p in parts:
        dtype = torch.promote_types(torch.promote_types(dtype, p.up.dtype), p.down.dtype)
    return dtype


# ----------------------------------------------------------------------------------------- truncate


def choose_rank(s: torch.Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """How many of the descending singular values ``s`` to keep.

    ``energy``: smallest k with ``Σ_{≤k} σ² ≥ energy·Σ σ²``; ``rank`` caps k; neither: every nonzero σ.
    """
    _check_options(rank, energy)
    nonzero = int((s > _zero_tol(s, s.numel(), 1)).sum()) if s.numel() else 0
    k = nonzero
    if energy is not None and nonzero:
        cum = torch.cumsum(s.double() ** 2, 0)
        k = int(torch.searchsorted(cum, energy * float(cum[-1]) * (1 - 1e-12)).item()) + 1
    if rank is not None:
        k = min(k, rank)
    return max(0, min(k, nonzero))


def _check_options(rank: int | None, energy: float | None) -> None:
    if rank is not None and rank < 1:
        raise ConventionError(f"rank must be at least 1, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ConventionError(f"energy must be in (0, 1], got {energy}")


def _finish(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int) -> Truncation:
    """Split the top-``k`` triplets as ``U√S``/``√S·Vᵀ`` and measure what was dropped."""
    s2 = s.double() ** 2
    total = float(s2.sum())
    dropped = float(s2[k:].sum())
    kept_energy = 1.0 if total == 0.0 else (total - dropped) / total
    rel_error = 0.0 if total == 0.0 else math.sqrt(dropped / total)
    root = s[:k].sqrt()
    lowrank = LowRank(u[:, :k] * root, root[:, None] * vh[:k])
    return Truncation(lowrank, k, kept_energy, rel_error, total)


def _orthogonal_basis(up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``up = Q·R`` for columns already orthogonal: ``Q = up/‖col‖``, ``R = diag(‖col‖)`` (zero columns dropped)."""
    norms = up.norm(dim=0)
    keep = norms > 0
    return up[:, keep] / norms[keep], torch.diag(norms)[keep]


def truncate(lr: LowRank, rank: int | None = None, energy: float | None = None) -> Truncation:
    """Eckart–Young optimal truncation of ``up @ down`` without a dense out×in SVD.

    Thin QR of ``up`` (skipped when ``lr.orthogonal_up``) and of ``downᵀ``, SVD of the small core; only
    when the inner size ``k`` reaches ``min(out, in)`` (no smaller core exists) is ΔW formed and SVD'd.

    Args:
        lr: the exact low-rank form.
        rank: target rank (an upper bound when ``energy`` is given too).
        energy: keep the smallest k with ``Σ_{≤k} σ² ≥ energy·Σ σ²`` (musubi: 0.9999).
            Neither: exact (every nonzero σ).
    """
    _check_options(rank, energy)
    if lr.rank == 0:
        return _finish(lr.up, lr.up.new_zeros(0), lr.down, 0)
    if lr.rank >= min(lr.up.shape[0], lr.down.shape[1]):  # no smaller core exists: one dense SVD is cheapest
        u, s, vh = torch.linalg.svd(lr.dense(), full_matrices=False)
        return _finish(u, s, vh, choose_rank(s, rank, energy))
    qu, ru = _orthogonal_basis(lr.up) if lr.orthogonal_up else torch.linalg.qr(lr.up)
    qd, rd = torch.linalg.qr(lr.down.t())
    uc, s, vch = torch.linalg.svd(ru @ rd.t(), full_matrices=False)
    k = choose_rank(s, rank, energy)
    return _finish(qu @ uc[:, :k], s, vch[:k] @ qd.t(), k)


def lokr_truncate(
    adapter: ModuleAdapter,
    shape: tuple,
    scale: float = 1.0,
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Truncation:
    """Optimal truncation of one LoKr: the singular values of ``kron(w1, w2)`` are the products ``σ1ᵢσ2ⱼ``.

    Only the two small factors are decomposed; the top-k products pick the columns
    ``u1ᵢ⊗u2ⱼ`` / ``v1ᵢ⊗v2ⱼ`` directly (formats.md §10). ``scale`` may be negative.
    """
    w = adapter.to(dtype=dtype).weights
    if not isinstance(w, LoKrWeights):
        raise UnsupportedError(f"{adapter.name}: lokr_truncate needs a LoKr module, got {adapter.algo}")
    (u1, s1, v1), (u2, s2, v2) = (factor_svd(*f) for f in _lokr_factors(w))
    out, cols = shape[0], math.prod(shape[1:])
    if u1.shape[0] * u2.shape[0] != out or v1.shape[0] * v2.shape[0] != cols:
        raise ShapeMismatchError(f"{adapter.name}: LoKr ΔW does not fit the weight {tuple(shape)}")
    products = (s1[:, None] * s2[None, :]).flatten() * abs(scale)
    s, order = torch.sort(products, descending=True)
    k = choose_rank(s, rank, energy)
    i, j = order[:k] // s2.numel(), order[:k] % s2.numel()
    u = (u1[:, None, i] * u2[None, :, j]).reshape(out, k)
    v = (v1[:, None, i] * v2[None, :, j]).reshape(cols, k)
    sign = -1.0 if scale < 0 else 1.0
    return _finish(u * sign, s, v.t(), k)
