"""Apply one parsed module to a weight tensor in place (the engine behind every patch and bake)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import dora, loha, lokr, lora
from .types import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights, ModuleAdapter


def apply_to_weight(
    adapter: ModuleAdapter,
    weight: torch.Tensor,
    strength: float,
    scale: float,
    function: Callable[[torch.Tensor], torch.Tensor] | None = None,
    backend: str = "native",
) -> torch.Tensor:
    """Update ``weight`` in place with ``strength·scale·ΔW`` and return it.

    ``weight`` is the (possibly row-sliced) target in its compute dtype. LoRA uses ``addmm_``,
    LoKr a broadcast ``addcmul_`` and LoHa row-chunked products, so no full ΔW is built unless a
    ``function`` must see the delta, DoRA needs it, or the weight is not contiguous.
    ``backend="lycoris"`` computes the dense ΔW with the LyCORIS library instead.
    """
    adapter = adapter.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)
    w = adapter.weights
    if isinstance(w, FullWeights) and w.kind == "set":
        weight.copy_(w.delta(tuple(weight.shape)).to(weight.dtype))
        return weight
    coeff = float(strength) * float(scale)
    if adapter.dora_scale is not None:
        return _apply_dora(adapter, weight, strength, scale)
    if backend == "lycoris" or function is not None or not weight.is_contiguous() or coeff == 0.0:
        if coeff != 0.0 or function is not None:
            delta = _dense_delta(adapter, tuple(weight.shape), backend) * coeff
            weight += (function(delta) if function is not None else delta).to(weight.dtype)
        return weight
    _add_structured(w, weight, coeff)
    return weight


def _dense_delta(adapter: ModuleAdapter, shape: tuple[int, ...], backend: str) -> torch.Tensor:
    if backend == "lycoris":
        from .lycoris_backend import lycoris_delta

        return lycoris_delta(adapter.weights, shape)
    return adapter.weights.delta(shape)


def _add_structured(w, weight: torch.Tensor, coeff: float) -> None:
    if isinstance(w, LoRAWeights) and w.mid is None:
        lora.add_inplace(weight, w.up, w.down, coeff)
    elif isinstance(w, LoKrWeights):
        lokr.add_inplace(weight, w, coeff)
    elif isinstance(w, LoHaWeights) and w.t1 is None and w.t2 is None:
        loha.add_inplace(weight, w, coeff)
    else:
        weight.add_(w.delta(tuple(weight.shape)), alpha=coeff)


def _apply_dora(adapter: ModuleAdapter, weight: torch.Tensor, strength: float, scale: float) -> torch.Tensor:
    scaled = adapter.weights.delta(tuple(weight.shape)) * scale
    patched = dora.apply(weight.float(), scaled.float(), adapter.dora_scale.float(), strength, adapter.dora_kind)
    weight.copy_(patched.to(weight.dtype))
    return weight


def delta_for(
    adapter: ModuleAdapter, shape: tuple[int, ...], strength: float, scale: float, base: torch.Tensor | None = None
) -> torch.Tensor:
    """The fp32 change ``W' − W`` this module makes to a weight of ``shape`` (DoRA needs ``base``)."""
    if adapter.dora_scale is None and not (isinstance(adapter.weights, FullWeights) and adapter.weights.kind == "set"):
        return adapter.delta(shape) * (float(strength) * float(scale))
    if base is None:
        raise ValueError(f"{adapter.name}: DoRA/set patches need the base weight to compute a delta")
    patched = base.float().clone()
    apply_to_weight(adapter, patched, strength, scale)
    return patched - base.float()
