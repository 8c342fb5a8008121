"""Typed per-module adapter weights and their ΔW.

Shapes follow LyCORIS/kohya files (formats.md §1): LoRA up ``(out, r, 1…)``, down ``(r, in, k…)``;
LoHa ``hada_w*_a (out, r)``, ``hada_w*_b (r, in·∏k)`` (Tucker: ``(r, out)``, ``(r, in)``, core
``(r, r, k…)``); LoKr ``w1 (out_l, in_m)``, ``w2 (out_k, in_n[, k…])`` or its low-rank/Tucker form.
Every shape is read from the tensors; nothing is re-derived from a factor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..common.errors import ShapeMismatchError
from . import loha, lokr, lora


@dataclass
class LoRAWeights:
    """LoRA / LoCon factors: ``ΔW = up · [mid] · down``."""

    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None = None

    algo = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        return lora.delta(self.up, self.down, self.mid, shape)

    def out_in(self) -> tuple[int, int]:
        return int(self.up.shape[0]), int(self.down.shape[1])


@dataclass
class LoHaWeights:
    """LoHa factors: ``ΔW = (w1a·w1b) ⊙ (w2a·w2b)`` (or Tucker halves)."""

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    algo = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    def delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        return loha.delta(self, shape)

    def out_in(self) -> tuple[int, int]:
        if self.t1 is not None:
            return int(self.w1a.shape[1]), int(self.w1b.shape[1])
        return int(self.w1a.shape[0]), int(self.w1b.shape[1])


@dataclass
class LoKrWeights:
    """LoKr factors: ``ΔW = kron(w1, w2)`` with either factor full, low-rank or (w2) Tucker."""

    w1: torch.Tensor | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    algo = "lokr"

    @property
    def rank(self) -> int | None:
        """Rank used for the scale (formats.md §6); ``None`` when both factors are full."""
        if self.w2 is None:
            return int(self.w2b.shape[0])
        if self.w1 is None:
            return int(self.w1b.shape[0])
        return None

    @property
    def is_full(self) -> bool:
        return self.w1 is not None and self.w2 is not None

    def delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        return lokr.delta(self, shape)

    def w1_full(self) -> torch.Tensor:
        return self.w1 if self.w1 is not None else self.w1a @ self.w1b

    def w1_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return int(self.w1.shape[0]), int(self.w1.shape[1])
        return int(self.w1a.shape[0]), int(self.w1b.shape[1])

    def w2_out(self) -> int:
        if self.w2 is not None:
            return int(self.w2.shape[0])
        return int(self.w2a.shape[1] if self.t2 is not None else self.w2a.shape[0])

    def out_in(self) -> tuple[int, int] | tuple[int, None]:
        out_l, in_m = self.w1_shape()
        out = out_l * self.w2_out()
        if self.w2 is not None:
            return out, in_m * int(self.w2.shape[1])
        if self.t2 is not None:
            return out, in_m * int(self.w2b.shape[1])
        return out, None  # conv non-Tucker: w2_b mixes in_n and kernel; known only with the target shape


@dataclass
class FullWeights:
    """Whole-tensor patches: ``diff`` (add), ``set`` (replace); target is the weight or the bias."""

    tensor: torch.Tensor
    kind: str = "diff"  # "diff" | "set"
    on_bias: bool = False

    algo = "full"
    rank = None

    def delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.tensor.numel() != _numel(shape):
            raise ShapeMismatchError(f"full {self.kind} of shape {tuple(self.tensor.shape)} does not fit {shape}")
        return self.tensor.reshape(shape)

    def out_in(self) -> tuple[int, int | None]:
        shape = self.tensor.shape
        rows = int(shape[0]) if len(shape) else 1
        return rows, (int(shape[1]) if len(shape) > 1 else None)


Weights = LoRAWeights | LoHaWeights | LoKrWeights | FullWeights


@dataclass
class ModuleAdapter:
    """One algorithm's adapter on one module, with everything needed to apply it.

    Attributes:
        name: module prefix as written in the file (e.g. ``lora_unet_blocks_0_ffn_0``).
        weights: the typed factors.
        alpha: stored ``alpha`` (``None`` if the file has none).
        dora_scale: DoRA magnitude, if any; ``dora_kind`` says whose semantics apply.
        nominal_rank / nominal_alpha: rank/alpha from a PEFT ``adapter_config.json`` (override).
        keys: the state-dict keys this adapter consumed.
    """

    name: str
    weights: Weights
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    dora_kind: str = "lycoris"
    nominal_rank: int | None = None
    nominal_alpha: float | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def algo(self) -> str:
        return self.weights.algo

    def delta(
        self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Unscaled ΔW in ``dtype`` reshaped to the target weight's ``shape``."""
        moved = self.to(device=device, dtype=dtype)
        return moved.weights.delta(tuple(shape))

    def to(self, device=None, dtype=None) -> ModuleAdapter:
        """A copy with every factor moved/cast (no copy when nothing changes)."""
        if device is None and dtype is None:
            return self
        fields = {
            k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v)
            for k, v in vars(self.weights).items()
        }
        dora = self.dora_scale.to(device=device, dtype=dtype) if self.dora_scale is not None else None
        clone = ModuleAdapter(**{**vars(self), "weights": type(self.weights)(**fields), "dora_scale": dora})
        return clone


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
