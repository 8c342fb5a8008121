"""Combine adapter files into one: exact sums, or per-layer SVD re-factorisation to LoRA (issue 5).

* ``exact``: every module's weighted sum is kept exactly — LoRA-only modules as concatenated factors
  (each term's scale folded into ``up``, alpha = total rank); a module used by one LoHa/LoKr term
  keeps its native factors (scale folded into ``w1``); LoRA+LoHa mixes as the concatenated exact
  low-rank form when that is smaller than a dense delta; anything else as a full ``.diff``.
* ``svd``: per module, the exact low-rank forms of all terms are added and truncated optimally
  (:func:`~.lowrank.truncate`; one LoKr term: :func:`~.lowrank.lokr_truncate`) to ``rank`` or
  ``energy``; kept energy and relative error are reported per layer and overall.

:func:`to_lora` and :func:`resize_lora` are the single-file cases. Pure engine (no ComfyUI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..adapters import FullWeights, ModuleAdapter, module_scale
from ..adapters.keys import KOHYA_SUFFIX
from ..adapters.scale import portable_full_lokr_alpha
from ..common.errors import ArchitectureMismatchError, ConventionError, ShapeMismatchError, UnsupportedError
from ..common.tensor_files import save_tensor_file
from ..keymap import detect_family_from_adapter, split_producer_prefix
from ..keymap.resolver import normalise
from ..loading import AdapterSource
from . import metadata as md
from .lowrank import LowRank, add, exact_lowrank, lokr_truncate, truncate
from .metadata import CombineResult, LayerReport

MODES = ("exact", "svd")


@dataclass
class Term:
    """One file's adapter on one module, with ``coeff`` = file weight × the module's scale γ."""

    adapter: ModuleAdapter
    coeff: float


@dataclass
class ModuleGroup:
    """Everything the inputs put on one module."""

    name: str
    shape: tuple[int, ...] | None = None
    shape_known: bool = False  # False: a flattened (out, in·∏k) guess (kernel not stored in the factors)
    terms: list[Term] = field(default_factory=list)
    bias: list[Term] = field(default_factory=list)

    @property
    def flat(self) -> tuple[int, int]:
        return self.shape[0], math.prod(self.shape[1:])


def combine_adapters(
    sources: list[AdapterSource],
    weights: list[float] | None = None,
    mode: str = "exact",
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype | None = None,
    operation: str = "combine",
) -> CombineResult:
    """Weighted sum of parsed adapter files as one adapter state dict (same model family).

    Args:
        sources: files read with :func:`hadakron.loading.read_adapter` (their conventions resolved).
        weights: one per file (default 1); a weight of 0 drops the file's terms.
        mode: ``exact`` or ``svd`` (see the module docstring).
        rank, energy: ``svd`` targets (rank caps the energy rule when both are given; neither: lossless).
        dtype: dtype of the written factors (default: the first file's).
        operation: label stored in ``hadakron.merge`` (``combine``, ``to_lora``, ``resize``).

    Raises:
        ArchitectureMismatchError: files for different families; ShapeMismatchError: files that
            disagree on a layer's shape; UnsupportedError: DoRA or ``set_weight`` modules.
    """
    weights = _check_args(sources, weights, mode, rank, energy)
    family = _check_family(sources)
    groups = group_modules(sources, weights)
    out_dtype = dtype or _first_dtype(sources[0])
    tensors: dict[str, torch.Tensor] = {}
    layers: list[LayerReport] = []
    for group in groups:
        if group.terms:
            built, layer = _exact_group(group) if mode == "exact" else _svd_group(group, rank, energy)
            tensors.update({k: _stored(k, v, out_dtype) for k, v in built.items()})
            layers.append(layer)
        if group.bias:
            key = group.name + KOHYA_SUFFIX[("full", "diff_b")]
            tensors[key] = _stored(key, _dense_sum(group.bias, None), out_dtype)
    result = CombineResult(tensors, {}, layers, mode)
    info = {
        "operation": operation,
        "sources": [md.source_label(s.path) for s in sources],
        "weights": weights,
        "mode": mode,
        "rank": rank,
        "energy": energy,
        "kept_energy": round(result.kept_energy, 8),
        "rel_error": round(result.rel_error, 8),
    }
    kinds = {layer.kind for layer in layers if layer.kind != "zero"}
    ranks = [layer.rank for layer in layers if layer.kind in ("lora", "loha", "lokr") and layer.rank is not None]
    result.metadata = md.merged_metadata(sources[0].parsed.metadata, kinds, ranks, info, family)
    return result


def to_lora(source: AdapterSource, rank: int | None = None, energy: float | None = None, dtype=None) -> CombineResult:
    """Convert a LoHa/LoKr (or hybrid) file to LoRA: lossless without targets, optimal with them."""
    return combine_adapters([source], None, "svd", rank, energy, dtype, operation="to_lora")


def resize_lora(
    source: AdapterSource, rank: int | None = None, energy: float | None = None, dtype=None
) -> CombineResult:
    """Change a LoRA file's rank (optimal truncation per layer; a larger rank keeps it lossless)."""
    others = {a.algo for a in source.parsed.adapters() if not _is_bias(a)} - {"lora"}
    if others:
        raise UnsupportedError(
            f"resize takes a LoRA file; this one also has {', '.join(sorted(others))} modules (use to-lora)",
            path=source.path,
        )
    return combine_adapters([source], None, "svd", rank, energy, dtype, operation="resize")


def save_result(result: CombineResult, path, overwrite: bool = False):
    """Write the combined adapter atomically (never over an existing file unless ``overwrite``).

    Safetensors outputs get ``sshs_*`` hashes of exactly the written tensors (:func:`.metadata.hashed_for_saving`).
    The whole result is in memory by then: the hashes sit in the header, before the data they cover.
    """
    tensors, metadata = md.hashed_for_saving(result.tensors, result.metadata, path)
    return save_tensor_file(tensors, path, metadata, overwrite=overwrite)


# ------------------------------------------------------------------------------------------ grouping


def group_modules(sources: list[AdapterSource], weights: list[float]) -> list[ModuleGroup]:
    """Collect every file's terms per module (names as in the first file; zero weights dropped)."""
    style = md.name_style(sources[0].parsed.modules)
    groups: dict[str, ModuleGroup] = {}
    for source, weight in zip(sources, weights, strict=True):
        choice = source.convention
        for name, adapters in source.parsed.modules.items():
            key = md.canonical_module(name)
            group = groups.setdefault(key, ModuleGroup(md.output_module_name(name, style)))
            if weight == 0.0:
                continue
            for adapter in adapters:
                _refuse_unsupported(adapter, source.path)
                coeff = weight * module_scale(adapter, choice.convention, choice.rslora_flag)
                if _is_bias(adapter):
                    group.bias.append(Term(adapter, coeff))
                else:
                    _merge_shape(group, adapter, source.path)
                    group.terms.append(Term(adapter, coeff))
    return [g for g in groups.values() if g.terms or g.bias]


def module_shape(adapter: ModuleAdapter) -> tuple[tuple[int, ...], bool]:
    """The weight shape the factors imply and whether it is certain (conv kernels flattened in LoHa/LoKr ``_b``)."""
    w = adapter.weights
    if w.algo == "lora":
        tail = (w.down.shape[1], *w.mid.shape[2:]) if w.mid is not None else tuple(w.down.shape[1:])
        return (int(w.up.shape[0]), *map(int, tail)), True
    if w.algo == "loha":
        if w.t1 is not None:
            return (int(w.w1a.shape[1]), int(w.w1b.shape[1]), *map(int, w.t1.shape[2:])), True
        return (int(w.w1a.shape[0]), *map(int, w.w1b.shape[1:])), w.w1b.dim() > 2
    if w.algo == "lokr":
        return _lokr_shape(w)
    return tuple(int(d) for d in w.tensor.shape), True


def _lokr_shape(w) -> tuple[tuple[int, ...], bool]:
    out_l, in_m = w.w1_shape()
    out = out_l * w.w2_out()
    if w.w2 is not None:
        return (out, in_m * int(w.w2.shape[1]), *map(int, w.w2.shape[2:])), True
    if w.t2 is not None:
        return (out, in_m * int(w.w2b.shape[1]), *map(int, w.t2.shape[2:])), True
    return (out, in_m * math.prod(w.w2b.shape[1:])), False


def _merge_shape(group: ModuleGroup, adapter: ModuleAdapter, path: str) -> None:
    shape, known = module_shape(adapter)
    flat = (shape[0], math.prod(shape[1:]))
    if group.shape is not None and group.flat != flat:
        raise ShapeMismatchError(
            f"module {group.name!r} is {group.shape} in an earlier file but {adapter.algo} {shape} here", path=path
        )
    if group.shape is None or (known and not group.shape_known):
        group.shape, group.shape_known = shape, known


def _is_bias(adapter: ModuleAdapter) -> bool:
    return isinstance(adapter.weights, FullWeights) and adapter.weights.on_bias


def _refuse_unsupported(adapter: ModuleAdapter, path: str) -> None:
    if adapter.dora_scale is not None:
        raise UnsupportedError(
            f"module {adapter.name!r} is DoRA, which cannot be folded into a plain adapter sum "
            "(merge it into the model, then extract)",
            path=path,
        )
    if isinstance(adapter.weights, FullWeights) and adapter.weights.kind != "diff":
        raise UnsupportedError(f"module {adapter.name!r} replaces the weight (set_weight); it has no ΔW", path=path)


# ------------------------------------------------------------------------------------------ per mode


def _exact_group(group: ModuleGroup) -> tuple[dict, LayerReport]:
    algos = {t.adapter.algo for t in group.terms}
    if algos == {"lora"}:
        return _lora_tensors(group, _sum_lowrank(group), "lora")
    if len(group.terms) == 1 and algos <= {"loha", "lokr"}:
        return _native_tensors(group, group.terms[0])
    if len(group.shape) >= 2 and (not group.shape_known or (algos <= {"lora", "loha"} and _cheaper(group))):
        return _lora_tensors(group, _sum_lowrank(group), "lora")
    diff = _dense_sum(group.terms, group.shape)
    return {group.name + KOHYA_SUFFIX[("full", "diff")]: diff}, LayerReport(group.name, "diff", None)


def _svd_group(group: ModuleGroup, rank: int | None, energy: float | None) -> tuple[dict, LayerReport]:
    if len(group.shape) < 2:  # norm weights: no matrix to factor
        diff = _dense_sum(group.terms, group.shape)
        return {group.name + KOHYA_SUFFIX[("full", "diff")]: diff}, LayerReport(group.name, "diff", None)
    only = group.terms[0] if len(group.terms) == 1 else None
    if only is not None and only.adapter.algo == "lokr":
        result = lokr_truncate(only.adapter, group.flat, only.coeff, rank, energy)
    else:
        result = truncate(_sum_lowrank(group), rank, energy)
    tensors, layer = _lora_tensors(group, result.lowrank, "lora")
    layer.kept_energy, layer.rel_error, layer.energy = result.kept_energy, result.rel_error, result.total_energy
    return tensors, layer


def _sum_lowrank(group: ModuleGroup) -> LowRank:
    parts = [exact_lowrank(t.adapter, group.flat, t.coeff) for t in group.terms]
    return parts[0] if len(parts) == 1 else add(parts)


def _cheaper(group: ModuleGroup) -> bool:
    out, cols = group.flat
    rank = sum(_exact_rank(t.adapter) for t in group.terms)
    return rank * (out + cols) < out * cols


def _exact_rank(adapter: ModuleAdapter) -> int:
    w = adapter.weights
    return int(w.down.shape[0]) if w.algo == "lora" else int(w.w1b.shape[0] * w.w2b.shape[0])


def _dense_sum(terms: list[Term], shape) -> torch.Tensor:
    total = None
    for t in terms:
        target = shape or tuple(t.adapter.weights.tensor.shape)
        delta = t.adapter.delta(target) * t.coeff
        total = delta if total is None else total + delta
    return total


# ------------------------------------------------------------------------------------------ writing


def _lora_tensors(group: ModuleGroup, lr: LowRank, kind: str) -> tuple[dict, LayerReport]:
    """LoRA keys with alpha = rank (scale 1 in every convention); conv shapes restored when known."""
    k = lr.rank
    if k == 0:
        return {}, LayerReport(group.name, "zero", 0)
    up, down = lr.up, lr.down
    if group.shape_known and len(group.shape) > 2:
        up = up.reshape(up.shape[0], k, *([1] * (len(group.shape) - 2)))
        down = down.reshape(k, *group.shape[1:])
    tensors = {
        group.name + KOHYA_SUFFIX[("lora", "up")]: up,
        group.name + KOHYA_SUFFIX[("lora", "down")]: down,
        group.name + KOHYA_SUFFIX[("common", "alpha")]: torch.tensor(float(k)),
    }
    return tensors, LayerReport(group.name, kind, k)


def _native_tensors(group: ModuleGroup, term: Term) -> tuple[dict, LayerReport]:
    """One LoHa/LoKr term kept as is, its coefficient folded into the first factor."""
    w = term.adapter.to(dtype=torch.float32).weights
    fields = {role: t for role, t in vars(w).items() if isinstance(t, torch.Tensor)}
    first = "w1" if "w1" in fields else "w1a"
    fields[first] = fields[first] * term.coeff
    tensors = {group.name + KOHYA_SUFFIX[(w.algo, role)]: t for role, t in fields.items()}
    if w.algo == "lokr" and w.rank is None:
        alpha = portable_full_lokr_alpha(w.w1.shape[0], w.w2.shape[0])
    else:
        alpha = w.rank
    tensors[group.name + KOHYA_SUFFIX[("common", "alpha")]] = torch.tensor(float(alpha))
    return tensors, LayerReport(group.name, w.algo, w.rank)


# ------------------------------------------------------------------------------------------ checks


def _check_args(sources, weights, mode, rank, energy) -> list[float]:
    if not sources:
        raise ConventionError("combine needs at least one adapter file")
    if mode not in MODES:
        raise ConventionError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "exact" and (rank is not None or energy is not None):
        raise ConventionError("--rank/--energy apply to mode svd only (exact keeps every term)")
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise ConventionError(f"{len(weights)} weights for {len(sources)} files")
    if rank is not None and rank < 1:
        raise ConventionError(f"rank must be at least 1, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ConventionError(f"energy must be in (0, 1], got {energy}")
    return weights


def _check_family(sources: list[AdapterSource]) -> str | None:
    """The model family of the files (``None`` when unknown); files for different families are refused."""
    seen: dict[str, str] = {}
    for source in sources:
        names = [normalise(split_producer_prefix(n)[1]) for n in source.parsed.modules]
        family = detect_family_from_adapter(names)
        if family is not None:
            seen.setdefault(family, source.path)
    if len(seen) > 1:
        listed = ", ".join(f"{md.source_label(p)} ({f})" for f, p in seen.items())
        raise ArchitectureMismatchError(f"the files are for different model families: {listed}")
    return next(iter(seen), None)


def _stored(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Factors in ``dtype``; alphas stay fp32 (bf16 cannot hold every rank exactly, e.g. 257)."""
    target = torch.float32 if key.endswith(KOHYA_SUFFIX[("common", "alpha")]) else dtype
    return tensor.detach().to(device="cpu", dtype=target).contiguous()


def _first_dtype(source: AdapterSource) -> torch.dtype:
    for adapter in source.parsed.adapters():
        for value in vars(adapter.weights).values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.dtype
    return torch.float32
