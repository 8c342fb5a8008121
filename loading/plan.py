"""Plan how one adapter file patches one model: targets, scales, filters, per-block strengths."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..adapters import FullWeights, LoKrWeights, ModuleAdapter, module_scale
from ..common.errors import ArchitectureMismatchError, ConventionError
from ..keymap import KeyResolver, Target, detect_family_from_adapter, split_producer_prefix
from ..keymap.resolver import normalise
from .report import LoadReport
from .shapes import delta_rows_and_numel, fits, implied_lokr_factor
from .source import AdapterSource

ODD_FULL_LOKR_ALPHA = 9e9  # ai-toolkit's "full rank" marker alpha ≈ 1e10


@dataclass
class LoadOptions:
    """User choices that shape the plan (strength itself is applied by ComfyUI's patcher)."""

    include: str = ""
    exclude: str = ""
    block_strengths: dict[int, float] = field(default_factory=dict)
    namespace: str = "unet"


@dataclass
class PlannedPatch:
    """One adapter module on one target; ``scale`` = γ × block multiplier."""

    target: Target
    adapter: ModuleAdapter
    scale: float


def plan_adapter(
    source: AdapterSource, resolver: KeyResolver, options: LoadOptions | None = None, strict_family: bool = True
) -> tuple[list[PlannedPatch], LoadReport]:
    """Resolve every module of ``source`` against ``resolver``'s model.

    Returns the patches to apply and the report. Raises :class:`ArchitectureMismatchError` when
    no module matches and the adapter clearly targets another family or size (``strict_family``).
    """
    options = options or LoadOptions()
    include, exclude = _compile(options.include, "include"), _compile(options.exclude, "exclude")
    report = _new_report(source, resolver)
    patches: list[PlannedPatch] = []
    for name, adapters in source.parsed.modules.items():
        namespace, _ = split_producer_prefix(name)
        if namespace != options.namespace and name not in resolver.aliases:
            report.other_namespace.append(name)
            continue
        if len(adapters) > 1 and len({a.algo for a in adapters}) > 1:
            report.hybrid.append(f"{name}: {', '.join(a.algo for a in adapters)}")
        for adapter in adapters:
            planned = _plan_module(adapter, resolver, source, include, exclude, options, report)
            if planned:
                patches.append(planned)
    report.patches = len(patches)
    _check_architecture(source, resolver, report, strict_family)
    return patches, report


def _plan_module(
    adapter: ModuleAdapter,
    resolver: KeyResolver,
    source: AdapterSource,
    include,
    exclude,
    options: LoadOptions,
    report: LoadReport,
) -> PlannedPatch | None:
    on_bias = isinstance(adapter.weights, FullWeights) and adapter.weights.on_bias
    target = resolver.resolve(adapter.name, bias=on_bias)
    if target is None:
        report.unmatched.append(f"{adapter.name} [{adapter.algo}]")
        return None
    if (include and not include.search(target.module)) or (exclude and exclude.search(target.module)):
        report.filtered_out.append(f"{adapter.name} -> {target.module}")
        return None
    shape = resolver.target_shape(target)
    if not fits(adapter.weights, shape):
        rows, numel = delta_rows_and_numel(adapter.weights)
        report.shape_mismatched.append(
            (adapter.name, target.module, f"adapter makes {rows} rows / {numel} values, layer is {shape}")
        )
        return None
    _record_stats(adapter, shape, report)
    block = resolver.block_of(target.module)
    multiplier = options.block_strengths.get(block, 1.0) if block is not None else 1.0
    gamma = module_scale(adapter, source.convention.convention, source.convention.rslora_flag)
    report.matched.append((adapter.name, target.module + _slice_text(target), adapter.algo))
    return PlannedPatch(target=target, adapter=adapter, scale=gamma * multiplier)


def _slice_text(target: Target) -> str:
    if target.offset is None:
        return ""
    _, start, length = target.offset
    return f"[rows {start}:{start + length}]"


def _record_stats(adapter: ModuleAdapter, shape: tuple[int, ...], report: LoadReport) -> None:
    w = adapter.weights
    rank = adapter.nominal_rank or w.rank
    report.ranks["full" if rank is None else rank] += 1
    if adapter.alpha is not None:
        report.alphas[_short(adapter.alpha)] += 1
    if isinstance(w, LoKrWeights) and len(shape) >= 2:
        report.lokr_factors[implied_lokr_factor(w, shape)] += 1
        if w.is_full and adapter.alpha is not None and adapter.alpha >= ODD_FULL_LOKR_ALPHA:
            _note_once(report, "ai-toolkit full-rank LoKr alpha (~1e10) read as scale 1")


def _short(value: float) -> str:
    return f"{value:g}"


def _note_once(report: LoadReport, note: str) -> None:
    if note not in report.notes:
        report.notes.append(note)


def _new_report(source: AdapterSource, resolver: KeyResolver) -> LoadReport:
    parsed = source.parsed
    adapter_family = detect_family_from_adapter(normalise(split_producer_prefix(n)[1]) for n in parsed.modules)
    report = LoadReport(
        file=source.path,
        producer=source.producer,
        convention=source.convention.convention,
        convention_reason=source.convention.reason,
        family_model=resolver.family,
        family_adapter=adapter_family,
        algo_counts=parsed.algo_counts(),
        persisted_factor=parsed.persisted_factor(),
        unknown_keys=list(parsed.unknown_keys),
    )
    report.consumed_non_weight = sorted(parsed.globals) + sorted(
        k for a in parsed.adapters() for k in a.keys if k.endswith(".lokr_factor")
    )
    _factor_notes(report)
    return report


def _factor_notes(report: LoadReport) -> None:
    buf, meta = report.persisted_factor
    if buf is not None and meta is not None and buf != meta:
        report.notes.append(f"persisted factors disagree: buffer {buf} vs metadata {meta}")


def _check_architecture(source: AdapterSource, resolver: KeyResolver, report: LoadReport, strict: bool) -> None:
    persisted = [f for f in report.persisted_factor if f is not None]
    implied = {k for k in report.lokr_factors if k not in ("-1",)}
    if persisted and report.lokr_factors and str(persisted[0]) not in report.lokr_factors and "-1" not in implied:
        report.notes.append(
            f"persisted factor {persisted[0]} does not match the shapes (implied "
            f"{', '.join(report.lokr_factors)}); shapes were used"
        )
    if report.matched or not strict:
        return
    if report.shape_mismatched or (
        report.family_adapter and resolver.family and report.family_adapter != resolver.family
    ):
        size = _model_size(resolver)
        raise ArchitectureMismatchError(
            f"adapter targets {report.family_adapter or 'an unknown family'}"
            f"{' (' + report.shape_mismatched[0][2] + ')' if report.shape_mismatched else ''}, "
            f"but the model is {resolver.family or 'unknown'}{size}; nothing was loaded",
            path=source.path,
        )


def _model_size(resolver: KeyResolver) -> str:
    widths = [shape[1] for shape in resolver.shapes.values() if len(shape) == 2]
    return f" (hidden width {max(set(widths), key=widths.count)})" if widths else ""


def _compile(pattern: str, what: str):
    if not pattern or not pattern.strip():
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConventionError(f"{what} filter is not a valid regular expression: {exc}") from exc
