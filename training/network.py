"""The set of trainable adapters for one model, attached by forward replacement (always restored).

:meth:`AdapterNetwork.attached` swaps each target module's ``forward`` for one that adds the
adapters' ``ΔW·x`` to the frozen layer's own output (so fp8/quantised bases, ComfyUI casts and
upstream patches keep working) and, with gradient checkpointing, wraps each block in
``torch.utils.checkpoint``. On exit every ``forward`` is put back exactly as it was, so a module
shared by ModelPatcher clones is never left modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.utils.checkpoint

from ..adapters import ModuleAdapter, portable_full_lokr_alpha
from ..adapters.keys import KOHYA_SUFFIX
from .modules import TrainableAdapter, build_adapter
from .targets import TargetSpec


class AdapterNetwork(torch.nn.Module):
    """Trainable adapters keyed by their ``lora_unet_`` name, with their :class:`TargetSpec` s."""

    def __init__(self, specs: list[TargetSpec], config, generator: torch.Generator):
        super().__init__()
        self.specs = {spec.key_prefix("musubi"): spec for spec in specs}
        self.adapters = torch.nn.ModuleDict()
        self.dropout_generator = torch.Generator().manual_seed(int(config.seed) + 1)
        for key, spec in self.specs.items():
            self.adapters[key] = _make(spec, config, generator)
            self.adapters[key].generator = self.dropout_generator
        self.factor = int(config.factor)

    def items(self) -> Iterator[tuple[TargetSpec, TrainableAdapter]]:
        """``(spec, adapter)`` pairs in build order."""
        for key, spec in self.specs.items():
            yield spec, self.adapters[key]

    def new_micro_step(self) -> None:
        """Draw fresh dropout masks on the next forward (recomputed forwards reuse the current ones)."""
        for adapter in self.adapters.values():
            adapter.clear_masks()

    # --- attaching ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self, root: torch.nn.Module, checkpoint_blocks: list[str] | None = None, clone_inputs=()):
        """Route ``root``'s target modules through the adapters.

        ``checkpoint_blocks`` run under activation checkpointing; ``clone_inputs`` modules get a copy
        of their input (for models that later modify that tensor in place).
        """
        grouped: dict[str, list[tuple[TargetSpec, TrainableAdapter]]] = {}
        for spec, adapter in self.items():
            grouped.setdefault(spec.path, []).append((spec, adapter))
        saved: list[tuple[torch.nn.Module, object]] = []
        try:
            for path, entries in grouped.items():
                module = root.get_submodule(path)
                saved.append((module, module.__dict__.get("forward")))
                module.forward = AdaptedForward(module, module.__dict__.get("forward"), entries)
            for paths, wrapper in ((clone_inputs, CloneInputForward), (checkpoint_blocks or (), CheckpointedForward)):
                for path in paths:
                    module = root.get_submodule(path)
                    saved.append((module, module.__dict__.get("forward")))
                    module.forward = wrapper(module, module.__dict__.get("forward"))
            yield self
        finally:
            for module, previous in reversed(saved):
                if previous is None:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = previous

    # --- export ------------------------------------------------------------------------------
    def module_adapters(self) -> list[tuple[TargetSpec, ModuleAdapter, float]]:
        """``(spec, ModuleAdapter with detached fp32 tensors, scale γ)`` for lazy patching."""
        out = []
        for spec, adapter in self.items():
            weights = adapter.weights()
            module = ModuleAdapter(name=spec.key_prefix("musubi"), weights=weights, alpha=float(adapter.alpha))
            out.append((spec, module, adapter.scale()))
        return out

    def state_dict_for_file(self, key_format: str = "musubi", dtype=torch.float32, with_factor=True) -> dict:
        """Tensors in a key format (``musubi`` = ``lora_unet_``; ``comfy`` = ``diffusion_model.``).

        Per-module ``alpha`` is written for every module; full-matrix LoKr stores the portable alpha
        ``w2.shape[0] // w1.shape[0]`` (formats.md §7.1). With ``with_factor`` LoKr files also carry
        the int64 ``lokr_factor`` buffer (never cast to ``dtype``); the ``comfy`` format leaves it out
        (ComfyUI's loader would warn about an unused key) and relies on ``ss_lokr_factor``.
        """
        tensors: dict[str, torch.Tensor] = {}
        has_lokr = False
        for spec, adapter in self.items():
            prefix = spec.key_prefix(key_format)
            for name, param in adapter.named_parameters(recurse=False):
                tensors[prefix + KOHYA_SUFFIX[(adapter.algo, name)]] = param.detach().to(dtype).contiguous().cpu()
            tensors[prefix + ".alpha"] = torch.tensor(_stored_alpha(adapter), dtype=dtype)
            has_lokr |= adapter.algo == "lokr"
        if has_lokr and with_factor:
            tensors["lokr_factor"] = torch.tensor(self.factor, dtype=torch.int64)
        return tensors

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """fp32 copies of every parameter and alpha (for the resume sidecar)."""
        return {k: v.detach().clone().cpu() for k, v in self.state_dict().items()}


def _stored_alpha(adapter: TrainableAdapter) -> float:
    if adapter.algo == "lokr" and adapter.rank is None:
        w1 = adapter.w1_full(torch.float32)
        return portable_full_lokr_alpha(int(w1.shape[0]), int(adapter.w2.shape[0]))
    return float(adapter.alpha)


def _make(spec: TargetSpec, config, generator: torch.Generator) -> TrainableAdapter:
    rank, alpha = config.network_dim, config.network_alpha
    if spec.is_conv:
        rank = config.conv_dim or rank
        alpha = config.conv_alpha or alpha
    return build_adapter(
        config.algo,
        spec.out_dim,
        spec.in_dim,
        spec.kernel,
        rank,
        alpha,
        dropouts=(config.dropout, config.rank_dropout, config.module_dropout),
        generator=generator,
        lokr_options=(config.factor, config.decompose_both, config.full_matrix),
    )


class AdaptedForward:
    """``forward`` replacement: the layer's own output plus every adapter's scaled delta."""

    def __init__(self, module: torch.nn.Module, previous, entries):
        self.module = module
        self.previous = previous
        self.entries = entries
        self.conv = _conv_kwargs(module)
        starts = [spec.offset[1] if spec.offset else 0 for spec, _ in entries]
        self.tiled = len(entries) > 1 and starts == sorted(starts) and starts[0] == 0
        self.tiled = self.tiled and sum(s.out_dim for s, _ in entries) == getattr(module, "out_features", -1)

    def __call__(self, x, *args, **kwargs):
        if self.previous is not None:
            out = self.previous(x, *args, **kwargs)
        else:
            out = type(self.module).forward(self.module, x, *args, **kwargs)
        if len(self.entries) == 1 and self.entries[0][0].offset is None:
            adapter = self.entries[0][1]
            return out if adapter.module_skipped() else adapter.add_to(out, x, self.conv)
        deltas = []
        for _, adapter in self.entries:
            if adapter.module_skipped():
                deltas.append(None)
                continue
            deltas.append(adapter(x, self.conv).to(out.dtype))
        return self._add(out, deltas)

    def _add(self, out: torch.Tensor, deltas: list) -> torch.Tensor:
        channel = -1 if self.conv is None else 1
        if self.tiled and all(d is not None for d in deltas):
            return out + torch.cat(deltas, dim=channel)
        for (spec, _), delta in zip(self.entries, deltas, strict=True):
            if delta is None:
                continue
            if spec.offset is None:
                out = out + delta
            else:
                out = _add_rows(out, delta, channel, spec.offset[1])
        return out


def _add_rows(out: torch.Tensor, delta: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    size, length = out.shape[dim], delta.shape[dim]
    parts = [out.narrow(dim, 0, start), out.narrow(dim, start, length) + delta]
    parts.append(out.narrow(dim, start + length, size - start - length))
    return torch.cat(parts, dim=dim)


def _conv_kwargs(module) -> dict | None:
    if not isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return None
    padding = module.padding if isinstance(module.padding, str) or module.padding_mode == "zeros" else 0
    return {"stride": module.stride, "padding": padding, "dilation": module.dilation, "groups": module.groups}


class _Wrapped:
    def __init__(self, module: torch.nn.Module, previous):
        self.module = module
        self.previous = previous

    def _run(self, *args, **kwargs):
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)


class CloneInputForward(_Wrapped):
    """``forward`` replacement that hands the module a copy of its first input."""

    def __call__(self, x, *args, **kwargs):
        return self._run(x.clone() if torch.is_tensor(x) and torch.is_grad_enabled() else x, *args, **kwargs)


class CheckpointedForward(_Wrapped):
    """``forward`` replacement running the block under non-reentrant activation checkpointing."""

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self._run(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(self._run_on_copies, *args, use_reentrant=False, **kwargs)

    def _run_on_copies(self, *args, **kwargs):
        # Blocks that update their inputs in place (FLUX's ``img += …``) must not touch the tensors
        # the checkpoint keeps for recomputation.
        copy = lambda a: a.clone() if torch.is_tensor(a) else a  # noqa: E731
        return self._run(*(copy(a) for a in args), **{k: copy(v) for k, v in kwargs.items()})
