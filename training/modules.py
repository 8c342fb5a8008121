"""Trainable adapter modules: fp32 parameters, ``alpha`` as a buffer (never trained), dropouts, and a
forward that returns the scaled ``ΔW·x`` without building ΔW for Linear layers.

* LoRA: ``up·(down·x)``; LoHa: the exact rank-r² face-splitting form (formats.md §9.2); LoKr: the
  Kronecker identity ``kron(w1, w2)·vec(X) = vec(w1·X·w2ᵀ)`` (§9.1). Convs use the kernel-sized ΔW.
* Initialisation is LyCORIS' (ΔW = 0 at step 0), from ``hadakron.adapters.init_*``.
* Parameter names equal the typed weight fields (``up``/``down``, ``w1a``…, ``w1``/``w2a``…), so
  :meth:`TrainableAdapter.weights` and :meth:`TrainableAdapter.load_weights` are one-liners.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..adapters import LoHaWeights, LoKrWeights, LoRAWeights, init_loha, init_lokr, init_lora
from ..adapters import lokr as lokr_math
from ..adapters.loha import low_rank_factors, low_rank_is_cheaper
from ..common.errors import ShapeMismatchError

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class TrainableAdapter(torch.nn.Module):
    """Base class; subclasses define ``linear_parts``, ``rank`` (and ``delta_kernel`` if special)."""

    algo = ""
    weights_type: type = LoRAWeights

    def __init__(self, out_dim: int, in_dim: int, kernel: tuple[int, ...], alpha: float, dropouts=(0.0, 0.0, 0.0)):
        super().__init__()
        self.out_dim, self.in_dim, self.kernel = int(out_dim), int(in_dim), tuple(kernel)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32))
        self.dropout, self.rank_dropout, self.module_dropout = (float(p) for p in dropouts)
        self.generator: torch.Generator | None = None
        self._masks: dict[tuple, torch.Tensor] = {}

    # --- parameters --------------------------------------------------------------------------
    def _set_params(self, weights) -> None:
        for name, value in vars(weights).items():
            if isinstance(value, torch.Tensor):
                self.register_parameter(name, torch.nn.Parameter(value.detach().float().clone()))

    def param_names(self) -> list[str]:
        """The trained tensors' field names, in registration order."""
        return [name for name, _ in self.named_parameters(recurse=False)]

    def weights(self):
        """Detached fp32 typed weights (``LoRAWeights``/``LoHaWeights``/``LoKrWeights``)."""
        return self.weights_type(**{n: p.detach().clone() for n, p in self.named_parameters(recurse=False)})

    def load_weights(self, weights, alpha: float | None) -> None:
        """Copy a structurally identical adapter's tensors (and alpha) into this module."""
        for name, param in self.named_parameters(recurse=False):
            value = getattr(weights, name, None)
            if value is None or value.numel() != param.numel():
                raise ShapeMismatchError(
                    f"{name}: {None if value is None else tuple(value.shape)} vs {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value.detach().reshape(param.shape).to(param.dtype))
        for name in ("w1", "w1a", "w1b", "w2", "w2a", "w2b", "t1", "t2", "mid"):
            if getattr(weights, name, None) is not None and name not in self._parameters:
                raise ShapeMismatchError(f"the source has {name}, this module does not")
        if alpha is not None:
            self.alpha.fill_(float(alpha))

    # --- scale and dropout -------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        """Rank used for the scale (``None`` for full-matrix LoKr)."""
        raise NotImplementedError

    def scale(self) -> float:
        """γ = α / r (LyCORIS); 1 for full-matrix LoKr."""
        rank = self.rank
        return 1.0 if rank is None else float(self.alpha) / rank

    def clear_masks(self) -> None:
        """Forget this micro-step's dropout masks (recomputed forwards reuse them until then)."""
        self._masks.clear()

    def _mask(self, key: tuple, shape: tuple[int, ...], keep: float, device) -> torch.Tensor:
        mask = self._masks.get(key)
        if mask is None:
            draw = torch.rand(shape, generator=self.generator)
            mask = (draw < keep).float()
            self._masks[key] = mask
        return mask.to(device)

    def module_skipped(self) -> bool:
        """Module dropout: skip this module's delta for the current micro-step."""
        if not self.training or self.module_dropout <= 0:
            return False
        return bool(self._mask(("module",), (1,), 1.0 - self.module_dropout, "cpu")[0] == 0)

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, conv: dict | None = None) -> torch.Tensor:
        """Scaled ``ΔW·x`` (Linear, ``conv`` None) or ``conv(x, ΔW)`` with the layer's ``conv`` kwargs."""
        if conv is None:
            hidden, last = self.linear_parts(x)
            y = (hidden @ last.t()).view(*x.shape[:-1], self.out_dim)
            scale, channel = 1.0, -1
        else:
            y = self.conv_delta(x, self.delta_kernel().to(x.dtype), conv)
            scale, channel = self.scale(), 1
        if self.training and self.rank_dropout > 0 and self.algo != "lora":
            keep = 1.0 - self.rank_dropout
            mask = self._mask(("rows",), (self.out_dim,), keep, y.device).to(y.dtype)
            y = y * mask.view(-1, *([1] * (y.dim() - 1 - (channel % y.dim()))))
            scale /= keep
        return y * scale if scale != 1.0 else y

    def add_to(self, out: torch.Tensor, x: torch.Tensor, conv: dict | None = None) -> torch.Tensor:
        """``out + γ·ΔW·x``; for Linear layers the last GEMM accumulates straight into ``out`` (addmm)."""
        row_mask = self.training and self.rank_dropout > 0 and self.algo != "lora"
        if conv is not None or row_mask or not out.is_contiguous():
            return out + self(x, conv).to(out.dtype)
        hidden, last = self.linear_parts(x)
        flat = out.reshape(-1, last.shape[0])
        return torch.addmm(flat, hidden.to(out.dtype), last.t().to(out.dtype)).view(out.shape)

    def linear_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden (M, k), last (c, k))`` with ``γ·ΔW·x`` = ``(hidden @ lastᵀ)`` viewed as ``(…, out)``.

        The scale is folded into a small factor, so no pass over the output is spent on it.
        """
        raise NotImplementedError

    def conv_delta(self, x: torch.Tensor, kernel: torch.Tensor, conv: dict) -> torch.Tensor:
        """``conv(x, kernel)`` with the layer's stride/padding/dilation/groups."""
        return _CONV[len(self.kernel)](x, kernel, **conv)

    def delta_kernel(self) -> torch.Tensor:
        """Unscaled ΔW reshaped to the conv weight ``(out, in, k…)``."""
        shape = (self.out_dim, self.in_dim, *self.kernel)
        return self.weights_type(**dict(self.named_parameters(recurse=False))).delta(shape)


class TrainLoRA(TrainableAdapter):
    """LoRA / LoCon: ``up (out, r[, 1…])``, ``down (r, in[, k…])``; neuron and rank dropout on the hidden."""

    algo = "lora"
    weights_type = LoRAWeights

    def __init__(self, out_dim, in_dim, kernel, rank, alpha, dropouts=(0.0, 0.0, 0.0), generator=None):
        super().__init__(out_dim, in_dim, kernel, alpha, dropouts)
        self._set_params(init_lora(out_dim, in_dim, rank, kernel, generator))

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def _hidden_dropout(self, h: torch.Tensor, channel: int) -> torch.Tensor:
        if not self.training:
            return h
        if self.dropout > 0:
            keep = 1.0 - self.dropout
            h = h * self._mask(("neuron", tuple(h.shape)), tuple(h.shape), keep, h.device).to(h.dtype) / keep
        if self.rank_dropout > 0:
            keep = 1.0 - self.rank_dropout
            shape = [h.shape[0]] + [1] * (h.dim() - 1)
            shape[channel] = self.rank
            h = h * self._mask(("rank", tuple(shape)), tuple(shape), keep, h.device).to(h.dtype) / keep
        return h

    def linear_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.linear(x, self.down.to(x.dtype).flatten(1))
        h = self._hidden_dropout(h, h.dim() - 1)
        return h.reshape(-1, self.rank), self.up.to(x.dtype).flatten(1) * self.scale()

    def forward(self, x: torch.Tensor, conv: dict | None = None) -> torch.Tensor:
        if conv is None:
            return super().forward(x)
        h = _CONV[len(self.kernel)](x, self.down.to(x.dtype), **conv)
        h = self._hidden_dropout(h, 1)
        up = self.up.to(x.dtype).reshape(self.out_dim, self.rank, *([1] * len(self.kernel)))
        return _CONV[len(self.kernel)](h, up) * self.scale()


class TrainLoHa(TrainableAdapter):
    """LoHa: exact ``U·(V·x)`` at rank r² (never ΔW) while that is cheaper than a dense product."""

    algo = "loha"
    weights_type = LoHaWeights

    def __init__(self, out_dim, in_dim, kernel, rank, alpha, dropouts=(0.0, 0.0, 0.0), generator=None):
        super().__init__(out_dim, in_dim, kernel, alpha, dropouts)
        self._set_params(init_loha(out_dim, in_dim, rank, kernel, generator))

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    def linear_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w1a, w1b, w2a, w2b = (p.to(x.dtype) for p in (self.w1a, self.w1b, self.w2a, self.w2b))
        rows = x.reshape(-1, x.shape[-1])
        if low_rank_is_cheaper(w1a, w1b, w2a):
            u, v = low_rank_factors(w1a * self.scale(), w1b, w2a, w2b)
            return F.linear(rows, v), u
        return rows, (w1a @ w1b) * (w2a @ w2b) * self.scale()


class TrainLoKr(TrainableAdapter):
    """LoKr in the LyCORIS layout (w1 small, w2 large; either low-rank by LyCORIS' thresholds)."""

    algo = "lokr"
    weights_type = LoKrWeights

    def __init__(
        self, out_dim, in_dim, kernel, rank, alpha, dropouts=(0.0, 0.0, 0.0), generator=None, lokr_options=None
    ):
        super().__init__(out_dim, in_dim, kernel, alpha, dropouts)
        factor, decompose_both, full_matrix = lokr_options or (-1, False, False)
        weights = init_lokr(out_dim, in_dim, rank, factor, decompose_both, full_matrix, kernel, generator)
        self._set_params(weights)

    @property
    def rank(self) -> int | None:
        if "w2b" in self._parameters:
            return int(self.w2b.shape[0])
        if "w1b" in self._parameters:
            return int(self.w1b.shape[0])
        return None

    def w1_full(self, dtype) -> torch.Tensor:
        """``w1`` (or ``w1a·w1b``) in ``dtype``."""
        if "w1" in self._parameters:
            return self.w1.to(dtype)
        return self.w1a.to(dtype) @ self.w1b.to(dtype)

    def linear_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = self.w1_full(x.dtype) * self.scale()
        if "w2" in self._parameters:
            return kron_parts(x, w1, w2=self.w2.to(x.dtype))
        return kron_parts(x, w1, w2a=self.w2a.to(x.dtype), w2b=self.w2b.to(x.dtype))

    def delta_kernel(self) -> torch.Tensor:
        weights = LoKrWeights(**dict(self.named_parameters(recurse=False)))
        return lokr_math.delta(weights, (self.out_dim, self.in_dim, *self.kernel))


def kron_parts(x: torch.Tensor, w1: torch.Tensor, w2=None, w2a=None, w2b=None):
    """``(hidden, last)`` with ``kron(w1, w2)·x = hidden @ lastᵀ`` viewed as ``(…, out)`` (formats.md §9.1).

    ``Y = w1·X·w2ᵀ`` on the free ``(N, in_m, in_n)`` view ``X`` of ``x``. Low-rank ``w2 = w2a·w2b``
    runs as ``(w1 applied to X·w2bᵀ)·w2aᵀ``: the data shrinks to rank ``r`` first, so the ``w1`` step
    (one batched matmul with a stride-0 batch) and what is saved for backward stay small; full ``w2``
    applies ``w1`` first. No transposed copies are made in either direction.
    """
    out_l, in_m = w1.shape
    rows = x.reshape(-1, x.shape[-1] // in_m)  # (N·in_m, in_n)
    if w2 is None:
        t = torch.matmul(w1, (rows @ w2b.t()).view(-1, in_m, w2b.shape[0]))  # (N, out_l, r)
        return t.reshape(-1, t.shape[-1]), w2a
    u = torch.matmul(w1, rows.view(-1, in_m, rows.shape[-1]))  # (N, out_l, in_n)
    return u.reshape(-1, u.shape[-1]), w2


def kron_linear(x: torch.Tensor, w1: torch.Tensor, w2=None, w2a=None, w2b=None) -> torch.Tensor:
    """``kron(w1, w2)·x`` for ``x (…, in)`` without building the Kronecker product."""
    hidden, last = kron_parts(x, w1, w2, w2a, w2b)
    return (hidden @ last.t()).reshape(*x.shape[:-1], w1.shape[0] * last.shape[0])


def build_adapter(algo: str, out_dim: int, in_dim: int, kernel: tuple[int, ...], rank: int, alpha: float, **kw):
    """Create one trainable adapter; ``kw``: ``dropouts``, ``generator``, ``lokr_options``."""
    cls = {"lora": TrainLoRA, "loha": TrainLoHa, "lokr": TrainLoKr}[algo]
    if algo != "lokr":
        kw.pop("lokr_options", None)
    return cls(out_dim, in_dim, kernel, rank, alpha, **kw)


def parameter_count(module: torch.nn.Module) -> int:
    """Trainable element count."""
    return sum(math.prod(p.shape) for p in module.parameters())
