"""Glue between planned patches and ComfyUI's ModelPatcher: lazy weight patches and bypass forwards."""

from __future__ import annotations

import logging

import comfy.lora
import comfy.utils
import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ..adapters import apply_to_weight
from ..adapters.bypass import bypass_forward
from ..common.errors import HadaKronError

LOG = logging.getLogger("hadakron")


def _comfy_identity_codes() -> tuple:
    """Code objects of ComfyUI's inline ``lambda a: a`` (passed as ``function`` when none is set)."""
    consts = getattr(comfy.lora.calculate_weight, "__code__", None)
    return tuple(c for c in (consts.co_consts if consts else ()) if getattr(c, "co_name", "") == "<lambda>")


_IDENTITY_CODES = _comfy_identity_codes()


def _real_function(function):
    if function is None or getattr(function, "__code__", None) in _IDENTITY_CODES:
        return None
    return function


class HadaKronWeightPatch(WeightAdapterBase):
    """A lazy patch ComfyUI's patcher evaluates per weight (baking, lowvram, dynamic VRAM alike).

    ``calculate_weight`` updates the (possibly row-sliced) weight in place with the producer's
    semantics, as the patcher's contract requires (the return value is dropped for offsets).
    """

    name = "hadakron"

    def __init__(self, adapter, scale: float, backend: str = "native"):
        self.adapter = adapter
        self.scale = float(scale)
        self.backend = backend
        self.loaded_keys = set(adapter.keys)
        self.weights = [t for t in vars(adapter.weights).values() if isinstance(t, torch.Tensor)]

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        try:
            return apply_to_weight(self.adapter, weight, strength, self.scale, _real_function(function), self.backend)
        except HadaKronError as exc:
            LOG.warning("HadaKron: %s: %s", key, exc)
            return None

    def calculate_shape(self, key):
        return None


def add_weight_patches(model_patcher, planned, strength: float, backend: str = "native"):
    """Add one lazy patch per planned module to ``model_patcher``; returns the accepted keys."""
    patches = {}
    for p in planned:  # several modules may land on one key (split q/k/v): ComfyUI takes one per call
        patches.setdefault(p.target.patch_key, []).append(HadaKronWeightPatch(p.adapter, p.scale, backend))
    accepted = set()
    while patches:
        batch = {k: v.pop(0) for k, v in patches.items()}
        accepted |= set(model_patcher.add_patches(batch, strength))
        patches = {k: v for k, v in patches.items() if v}
    return accepted
    return model_patcher.add_patches(patches, strength)


class BypassForward:
    """``forward`` replacement: the frozen layer's output plus every adapter's ``ΔW·x`` (no ΔW built)."""

    def __init__(self, module, previous, weight_shape: tuple[int, ...], items=()):
        self.module = module
        self.previous = previous
        self.weight_shape = tuple(weight_shape)
        self.items: list[tuple] = list(items)

    def extended(self, adapter, scale: float, strength: float, offset) -> BypassForward:
        """A new hook with one more adapter (hooks are shared by clones, so never mutated)."""
        item = (adapter, float(scale) * float(strength), offset)
        return BypassForward(self.module, self.previous, self.weight_shape, [*self.items, item])

    def __call__(self, x, *args, **kwargs):
        if self.previous is not None:
            out = self.previous(x, *args, **kwargs)
        else:
            out = type(self.module).forward(self.module, x, *args, **kwargs)
        conv_kwargs = _conv_kwargs(self.module)
        channel_dim = -1 if len(self.weight_shape) == 2 else 1
        for adapter, coeff, offset in self.items:
            moved = adapter.to(device=x.device, dtype=x.dtype)
            shape = self.weight_shape if offset is None else (offset[2], *self.weight_shape[1:])
            delta = bypass_forward(moved, x, shape, conv_kwargs) * coeff
            out = out + delta if offset is None else _add_into_slice(out, delta, channel_dim, offset[1])
        return out


def _add_into_slice(out: torch.Tensor, delta: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    """``out`` with ``delta`` added to channels ``start:start+len`` (out of place, autograd-safe)."""
    size = out.shape[dim]
    length = delta.shape[dim]
    parts = [
        out.narrow(dim, 0, start),
        out.narrow(dim, start, length) + delta,
        out.narrow(dim, start + length, size - start - length),
    ]
    return torch.cat(parts, dim=dim)


def _conv_kwargs(module) -> dict | None:
    if not hasattr(module, "stride"):
        return None
    return {"stride": module.stride, "padding": module.padding, "dilation": module.dilation, "groups": module.groups}


def add_bypass_patches(model_patcher, planned, strength: float, shapes: dict) -> list:
    """Route each planned module through a :class:`BypassForward` object patch.

    DoRA, ``set`` and bias patches cannot run as a bypass; those fall back to lazy weight
    patches. Returns the planned patches that fell back.
    """
    fallback = []
    for p in planned:
        weights = p.adapter.weights
        if (
            p.adapter.dora_scale is not None
            or getattr(weights, "kind", "diff") == "set"
            or getattr(weights, "on_bias", False)
            or p.target.key not in shapes
            or not p.target.key.endswith(".weight")
        ):
            fallback.append(p)
            continue
        module_path = p.target.key[: -len(".weight")]
        name = f"{module_path}.forward"
        hook = model_patcher.object_patches.get(name)
        if not isinstance(hook, BypassForward):
            module = comfy.utils.get_attr(model_patcher.model, module_path)
            hook = BypassForward(module, hook, shapes[p.target.key])
        model_patcher.add_object_patch(name, hook.extended(p.adapter, p.scale, strength, p.target.offset))
    if fallback:
        add_weight_patches(model_patcher, fallback, strength)
    return fallback
