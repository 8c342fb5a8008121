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
    """Base class; subclasses define ``delta_linear``, ``delta_kernel`` and ``rank``."""

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
        scale = self.scale()
        if conv is None:
            y = self.delta_linear(x)
            channel = -1
        else:
            kernel = self.delta_kernel().to(x.dtype)
            y = self.conv_delta(x, kernel, conv)
            channel = 1
        if self.training and self.rank_dropout > 0 and self.algo != "lora":
            keep = 1.0 - self.rank_dropout
            mask = self._mask(("rows",), (self.out_dim,), keep, y.device).to(y.dtype)
            y = y * mask.view(-1, *([1] * (y.dim() - 1 - (channel % y.dim()))))
            scale /= keep
        return y * scale

    def conv_delta(self, x: torch.Tensor, kernel: torch.Tensor, conv: dict) -> torch.Tensor:
        """``conv(x, kernel)`` with the layer's stride/padding/dilation/groups."""
        return _CONV[len(self.kernel)](x, kernel, **conv)

    def delta_linear(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled ``ΔW·x`` for a Linear layer, never building ΔW where avoidable."""
        raise NotImplementedError

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

    def delta_linear(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.down.to(x.dtype))
        h = self._hidden_dropout(h, h.dim() - 1)
        return F.linear(h, self.up.to(x.dtype).flatten(1))

    def forward(self, x: torch.Tensor, conv: dict | None = None) -> torch.Tensor:
        if conv is None:
            return self.delta_linear(x) * self.scale()
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

    def delta_linear(self, x: torch.Tensor) -> torch.Tensor:
        w1a, w1b, w2a, w2b = (p.to(x.dtype) for p in (self.w1a, self.w1b, self.w2a, self.w2b))
        if low_rank_is_cheaper(w1a, w1b, w2a):
            u, v = low_rank_factors(w1a, w1b, w2a, w2b)
            return F.linear(F.linear(x, v), u)
        return F.linear(x, (w1a @ w1b) * (w2a @ w2b))


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

    def delta_linear(self, x: torch.Tensor) -> torch.Tensor:
        w1 = self.w1_full(x.dtype)
        if "w2" in self._parameters:
            return kron_linear(x, w1, w2=self.w2.to(x.dtype))
        return kron_linear(x, w1, w2a=self.w2a.to(x.dtype), w2b=self.w2b.to(x.dtype))

    def delta_kernel(self) -> torch.Tensor:
        weights = LoKrWeights(**dict(self.named_parameters(recurse=False)))
        return lokr_math.delta(weights, (self.out_dim, self.in_dim, *self.kernel))


def kron_linear(x: torch.Tensor, w1: torch.Tensor, w2=None, w2a=None, w2b=None) -> torch.Tensor:
    """``kron(w1, w2)·x`` for ``x (…, in_m·in_n)`` without ΔW: ``Y = w1·X·w2ᵀ`` (formats.md §9.1).

    ``X`` is the free ``(N, in_m, in_n)`` view of ``x``; ``w1`` is applied first as one batched
    matmul (stride-0 batch), then ``w2`` (full ``(out_k, in_n)`` or ``w2a·w2b``) as plain GEMMs on the
    contiguous ``(N·out_l, in_n)`` result, so no transposed copies are made in either direction.
    """
    out_l, in_m = w1.shape
    lead = x.shape[:-1]
    u = torch.matmul(w1, x.reshape(-1, in_m, x.shape[-1] // in_m))  # (N, out_l, in_n)
    rows = u.reshape(-1, u.shape[-1])
    y = rows @ w2.t() if w2 is not None else (rows @ w2b.t()) @ w2a.t()  # (N·out_l, out_k)
    return y.reshape(*lead, out_l * y.shape[-1])


def build_adapter(algo: str, out_dim: int, in_dim: int, kernel: tuple[int, ...], rank: int, alpha: float, **kw):
    """Create one trainable adapter; ``kw``: ``dropouts``, ``generator``, ``lokr_options``."""
    cls = {"lora": TrainLoRA, "loha": TrainLoHa, "lokr": TrainLoKr}[algo]
    if algo != "lokr":
        kw.pop("lokr_options", None)
    return cls(out_dim, in_dim, kernel, rank, alpha, **kw)


def parameter_count(module: torch.nn.Module) -> int:
    """Trainable element count."""
    return sum(math.prod(p.shape) for p in module.parameters())
