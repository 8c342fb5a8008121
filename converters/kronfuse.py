"""Optimal truncation of row-stacked LoKr deltas (fused q/k/v) from the Kronecker structure alone.

For a LoKr part ``ΔWᵢ = γᵢ·kron(w1ᵢ, w2ᵢ)`` with factor SVDs ``w1 = U1 S1 V1ᵀ``, ``w2 = U2 S2 V2ᵀ``:
``ΔWᵢ = Qᵢ·diag(σᵢ)·Dᵢ`` with ``Qᵢ = kron(U1, U2)`` and ``Dᵢ = kron(V1, V2)ᵀ`` orthonormal and
``σᵢ = γᵢ·kron(s1, s2)``. The stack is ``vstack(ΔWᵢ) = blockdiag(Qᵢ)·C`` with ``C = Σ·vstack(Dᵢ)``:

* ``blockdiag(Qᵢ)`` already has orthonormal columns, so the singular values of the stack are those of
  the small ``C`` (K × in, K = Σ rank(w1ᵢ)·rank(w2ᵢ));
* ``C·Cᵀ = Σ·G·Σ`` where the Gram of the stacked downs has blocks ``Dᵢ·Dⱼᵀ = kron(V1ᵢᵀV1ⱼ, V2ᵢᵀV2ⱼ)``:
  products of tiny factor matrices, never an out×in or in×in matrix.

One K×K symmetric eigendecomposition (fp64) then gives the exact Eckart–Young truncation at any
rank: ``up = blockdiag(Qᵢ)·W_k·√S_k``, ``down = S_k^{-½}·W_kᵀ·C``. The dense (3h × in) ΔW is never
formed. Used by the Z-Image / HunyuanVideo 1.5 QKV converters (formats.md §10-§12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters import LoKrWeights
from ..merge.lowrank import LowRank, Truncation, choose_rank, factor_svd

GRAM_NOISE = 1e-13  # eigenvalues below this share of the largest are Gram round-off (fp64), not signal


@dataclass
class KronPart:
    """One LoKr part in SVD form: ``γ·kron(U1 S1 V1ᵀ, U2 S2 V2ᵀ)`` (fp64)."""

    u1: torch.Tensor
    s1: torch.Tensor
    v1: torch.Tensor
    u2: torch.Tensor
    s2: torch.Tensor
    v2: torch.Tensor
    gamma: float

    @property
    def rows(self) -> int:
        return int(self.u1.shape[0] * self.u2.shape[0])

    @property
    def inner(self) -> int:
        return int(self.s1.numel() * self.s2.numel())

    def sigma(self) -> torch.Tensor:
        """``γ·kron(s1, s2)`` (signed)."""
        return (self.s1[:, None] * self.s2[None, :]).flatten() * self.gamma


def kron_part(w: LoKrWeights, gamma: float) -> KronPart | None:
    """The SVD form of a Linear LoKr (``None`` for Tucker/conv factors, which take the generic path)."""
    if w.t2 is not None or (w.w2 is not None and w.w2.dim() != 2) or (w.w2b is not None and w.w2b.dim() != 2):
        return None
    first = (w.w1, None) if w.w1 is not None else (w.w1a, w.w1b)
    second = (w.w2, None) if w.w2 is not None else (w.w2a, w.w2b)
    u1, s1, v1 = factor_svd(*(t.double() if t is not None else None for t in first))
    u2, s2, v2 = factor_svd(*(t.double() if t is not None else None for t in second))
    return KronPart(u1, s1, v1, u2, s2, v2, float(gamma))


def _kron2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def _gram(parts: list[KronPart]) -> torch.Tensor:
    """``vstack(Dᵢ)·vstack(Dᵢ)ᵀ`` from the blocks ``kron(V1ᵢᵀV1ⱼ, V2ᵢᵀV2ⱼ)``."""
    rows = []
    for pi in parts:
        rows.append(torch.cat([_kron2(pi.v1.t() @ pj.v1, pi.v2.t() @ pj.v2) for pj in parts], dim=1))
    return torch.cat(rows, dim=0)


def applicable(parts: list[KronPart | None], cols: int) -> bool:
    """The structured path needs LoKr parts with one input factorisation and K <= in (else the generic one wins)."""
    present = [p for p in parts if p is not None]
    if not present:
        return False
    shapes = {(int(p.v1.shape[0]), int(p.v2.shape[0])) for p in present}
    inner = sum(p.inner for p in present)
    return len(shapes) == 1 and inner <= cols


def stacked_truncate(
    parts: list[KronPart | None], rows: list[int], cols: int, rank: int | None = None, energy: float | None = None
) -> tuple[Truncation, int]:
    """Optimal truncation of ``vstack(ΔWᵢ)`` (a ``None`` part is an all-zero block of ``rows[i]`` rows).

    Returns ``(truncation, exact rank of the stack)``; with ``rank`` alone only the top ``rank``
    eigenpairs are computed and the exact rank is reported as its upper bound ``min(K, in, out)``.

    Args:
        parts: the LoKr parts in row order (see :func:`applicable`).
        rows: row count of every part (needed for missing parts).
        cols: the common input width.
        rank / energy: as :func:`hadakron.merge.lowrank.truncate`.
    """
    present = [p for p in parts if p is not None]
    sigma = torch.cat([p.sigma() for p in present])
    gram = sigma[:, None] * _gram(present) * sigma[None, :]
    gram = (gram + gram.t()) * 0.5
    total = float((sigma**2).sum())
    if rank is not None and energy is None:
        lam, vecs = top_eigh(gram, min(rank, gram.shape[0]))
        signal = _signal(lam, float(lam[0]) if lam.numel() else 0.0)
        k = signal
        exact = None
    else:  # the energy rule needs every eigenvalue; the vectors come from the same decomposition
        lam, vecs = top_eigh(gram, int(gram.shape[0]))
        signal = _signal(lam, float(lam[0]) if lam.numel() else 0.0)
        k = choose_rank(lam[:signal].sqrt(), rank, energy) if signal else 0
        exact = signal
    dropped = min(max(total - float(lam[:k].sum()), 0.0), total)
    kept_energy = 1.0 if total == 0.0 else 1.0 - dropped / total
    rel_error = 0.0 if total == 0.0 else math.sqrt(dropped / total)
    up, down = _factors(parts, present, rows, cols, sigma, vecs[:, :k], lam[:k].sqrt())
    truncation = Truncation(LowRank(up, down), k, kept_energy, rel_error)
    return truncation, exact if exact is not None else min(int(gram.shape[0]), cols, sum(rows))


def _signal(lam: torch.Tensor, largest: float) -> int:
    """How many eigenvalues are signal rather than Gram round-off."""
    if largest <= 0.0:
        return 0
    return int((lam > GRAM_NOISE * largest).sum())


def top_eigh(m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenpairs of a symmetric fp64 matrix, descending, eigenvalues clamped at 0.

    With SciPy (shipped with ComfyUI) only the wanted pairs are computed (LAPACK ``syevr`` with an
    index range: one tridiagonalisation plus O(n·k) work) or, when most are wanted, all of them by
    divide and conquer (``syevd``); otherwise a full ``torch.linalg.eigh``.
    """
    n = int(m.shape[0])
    if k <= 0:
        return m.new_zeros(0), m.new_zeros(n, 0)
    scipy_linalg = _scipy_linalg()
    if scipy_linalg is None:
        lam, vecs = torch.linalg.eigh(m)
        lam, vecs = lam.flip(0)[:k], vecs.flip(1)[:, :k]
    else:
        if k >= n // 2:  # most pairs wanted: divide and conquer on the whole matrix
            lam_np, vecs_np = scipy_linalg.eigh(m.numpy(), driver="evd")
            lam_np, vecs_np = lam_np[n - k :], vecs_np[:, n - k :]
        else:
            lam_np, vecs_np = scipy_linalg.eigh(m.numpy(), subset_by_index=[n - k, n - 1], driver="evr")
        lam, vecs = torch.from_numpy(lam_np[::-1].copy()), torch.from_numpy(vecs_np[:, ::-1].copy())
    return lam.clamp(min=0.0), vecs


def _scipy_linalg():
    try:
        import scipy.linalg
    except ImportError:  # pragma: no cover - ComfyUI ships SciPy
        return None
    return scipy.linalg


def _factors(parts, present, rows, cols, sigma, w_k, s_k) -> tuple[torch.Tensor, torch.Tensor]:
    """``up = blockdiag(Qᵢ)·W_k·√S_k`` and ``down = S_k^{-½}·W_kᵀ·Σ·vstack(Dᵢ)`` part by part."""
    k = int(s_k.numel())
    root = s_k.sqrt()
    left = w_k * root[None, :]
    right = (w_k / root[None, :]).t() * sigma[None, :] if k else w_k.t()
    ups, down, start = [], torch.zeros(k, cols, dtype=torch.float64), 0
    for part, count in zip(parts, rows, strict=True):
        if part is None:
            ups.append(torch.zeros(count, k, dtype=torch.float64))
            continue
        r1, r2 = part.s1.numel(), part.s2.numel()
        block = slice(start, start + part.inner)
        start += part.inner
        x = left[block].reshape(r1, r2, k)
        ups.append(torch.einsum("pa,aqk->pqk", part.u1, torch.einsum("qb,abk->aqk", part.u2, x)).reshape(-1, k))
        y = right[:, block].reshape(k, r1, r2)
        down += _down_block(y, part)
    return torch.cat(ups, dim=0), down


def _down_block(y: torch.Tensor, part: KronPart) -> torch.Tensor:
    """``Y·kron(V1, V2)ᵀ`` for ``Y`` (k, r1, r2): ``(k, in_m·in_n)``."""
    k = y.shape[0]
    t = torch.einsum("kab,nb->kan", y, part.v2)
    return torch.einsum("kan,ma->kmn", t, part.v1).reshape(k, -1)
