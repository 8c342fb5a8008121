"""Adapter output ``ΔW·x`` for an input ``x`` without materialising ΔW (Linear), per algorithm."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import loha, lokr, lora
from .types import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights, ModuleAdapter

_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def bypass_forward(
    adapter: ModuleAdapter, x: torch.Tensor, weight_shape: tuple[int, ...], conv_kwargs: dict | None = None
) -> torch.Tensor:
    """Unscaled ``ΔW·x`` (Linear) or ``conv(x, ΔW)`` (Conv) for one module; differentiable.

    Linear LoRA runs two thin matmuls, LoKr the Kronecker identity and LoHa its exact rank-r1·r2
    form, so ΔW is never built for Linear layers. Convs use LoRA's two convolutions or, for
    LoHa/LoKr, the materialised kernel (small for convs). DoRA is not expressible as a bypass and
    raises ``ValueError``.

    Args:
        adapter: the parsed module (already on ``x``'s device/dtype).
        x: ``(..., in)`` for Linear, ``(B, C, …)`` for Conv.
        weight_shape: the frozen layer's weight shape (tells Linear from Conv and the kernel).
        conv_kwargs: ``stride``, ``padding``, ``dilation``, ``groups`` of the conv layer.
    """
    if adapter.dora_scale is not None:
        raise ValueError(f"{adapter.name}: DoRA cannot run as a bypass forward; use patch mode")
    w = adapter.weights
    if len(weight_shape) == 2:
        return _linear(w, x, weight_shape)
    return _conv(w, x, weight_shape, conv_kwargs or {})


def _linear(w, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(w, LoRAWeights) and w.mid is None:
        return lora.bypass_linear(x, w.up, w.down)
    if isinstance(w, LoKrWeights):
        return lokr.bypass_linear(x, w)
    if isinstance(w, LoHaWeights) and w.t1 is None:
        return loha.bypass_linear(x, w.w1a, w.w1b, w.w2a, w.w2b)
    if isinstance(w, FullWeights) and w.on_bias:
        return w.tensor.to(x.dtype).expand(*x.shape[:-1], -1)
    return F.linear(x, w.delta(shape))


def _conv(w, x: torch.Tensor, shape: tuple[int, ...], kwargs: dict) -> torch.Tensor:
    conv = _CONV[len(shape)]
    if isinstance(w, LoRAWeights) and w.mid is None and kwargs.get("groups", 1) == 1:
        hidden = conv(x, w.down, **kwargs)
        return conv(hidden, w.up.reshape(w.up.shape[0], w.up.shape[1], *([1] * (len(shape) - 2))))
    if isinstance(w, FullWeights) and w.on_bias:
        return w.tensor.to(x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
    return conv(x, w.delta(shape), **kwargs)
