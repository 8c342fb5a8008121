"""QKV conversion driver: split q/k/v modules <-> ComfyUI's fused ``qkv`` weight, with renames.

A :class:`QkvSpec` describes one family (Z-Image, HunyuanVideo 1.5) by tables on underscore names:
the split-module pattern, the fused name, and the other renames. Forward (to ComfyUI):

* LoRA and LoHa q/k/v fuse exactly (block-diagonal ``up``/``w*_a``, stacked ``down``/``w*_b``, alpha × 3);
* LoKr (or mixed algorithms), which no single LoKr can represent fused, become one LoRA by the optimal
  truncated SVD of the stacked ΔW (rank ``lokr_rank`` or the smallest keeping ``energy``), computed from
  the Kronecker factors; kept energy and relative error are reported per layer;
* ``lossless``: LoKr q/k/v stay split (HadaKron's loader applies them exactly onto qkv row slices;
  for Z-Image ComfyUI's own loader does too, under their diffusers names).

Reverse splits fused modules back exactly (LoRA, LoHa, LoKr when w1's rows divide by 3; otherwise LoRA).
The output keeps the ``lora_unet_`` prefix, like musubi's converters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..adapters import LoHaWeights, LoKrWeights, LoRAWeights
from ..common.errors import AdapterFormatError, UnsupportedError
from ..keymap import split_producer_prefix
from ..keymap.resolver import normalise
from .alphas import source_gamma
from .formats import rename_keys
from .io import LoadedAdapter, output_metadata
from .names import NameTable
from .qkv_math import (
    Part,
    fuse_loha,
    fuse_lora,
    fuse_to_lora,
    lokr_splits_exactly,
    split_loha,
    split_lokr,
    split_lora,
    split_to_lora,
)
from .report import ConversionReport, LayerFit

PARTS = ("q", "k", "v")
PREFIX = "lora_unet_"
MUSUBI_ENERGY = 0.9999


@dataclass(frozen=True)
class QkvSpec:
    """One family's QKV tables (regexes on underscore-normalised names without producer prefix).

    Attributes:
        split: matches a split module; groups ``base`` and ``part`` (q/k/v).
        fused: the fused module name, ``{base}`` filled in.
        fused_pattern: matches a fused module; group ``base``.
        part: a split module name from ``{base}`` and ``{part}``.
        renames / reverse_renames: other modules, ``(pattern, replacement)`` applied with ``re.sub``.
        lossless_prefix: prefix for LoKr q/k/v kept split in lossless mode (dotted trainer names when it
            ends with ``.``, else underscore names).
    """

    family: str
    label: str
    split: str
    fused: str
    fused_pattern: str
    part: str
    renames: tuple[tuple[str, str], ...]
    reverse_renames: tuple[tuple[str, str], ...]
    lossless_prefix: str = PREFIX


def suffix_renames(*changes: tuple[str, str, str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """:class:`QkvSpec` ``renames`` and ``reverse_renames`` for modules ``<base>_<old>`` -> ``<base>_<new>``.

    Each change is ``(base, old, new)``; ``base`` is a regex, ``old`` and ``new`` literal name suffixes.
    """
    return {
        "renames": tuple((rf"({base})_{old}", rf"\1_{new}") for base, old, new in changes),
        "reverse_renames": tuple((rf"({base})_{new}", rf"\1_{old}") for base, old, new in changes),
    }


@dataclass
class QkvOptions:
    """``lokr_rank`` (None: energy rule), ``energy`` (musubi 0.9999), ``lossless`` and ``reverse``."""

    lokr_rank: int | None = None
    energy: float = MUSUBI_ENERGY
    lossless: bool = False
    reverse: bool = False

    def truncation(self) -> tuple[int | None, float | None]:
        """``(rank, energy)`` for the truncation: an explicit rank wins (musubi: ``min(N, len(S))``)."""
        return (self.lokr_rank, None) if self.lokr_rank else (None, self.energy)


def _rename(norm: str, table: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in table:
        if re.fullmatch(pattern, norm):
            return re.sub(pattern, replacement, norm)
    return norm


def _unet_norm(module: str) -> str | None:
    namespace, rest = split_producer_prefix(module)
    return normalise(rest) if namespace == "unet" else None


def _shape(adapters) -> tuple[int, int]:
    from ..loading.shapes import delta_rows_and_numel

    rows, numel = delta_rows_and_numel(adapters[0].weights)
    return rows, numel // rows


def convert_qkv(loaded: LoadedAdapter, spec: QkvSpec, options: QkvOptions) -> tuple[dict, dict, ConversionReport]:
    """Fuse (or with ``options.reverse`` split) q/k/v; returns ``(tensors, metadata, report)``."""
    report = ConversionReport(
        source=loaded.path,
        operation=f"{spec.label} {'reverse (ComfyUI -> split)' if options.reverse else 'to ComfyUI'}",
        family=spec.family,
        convention=loaded.choice.convention,
        keys_in=len(loaded.tensors),
    )
    tensors = _split(loaded, spec, options, report) if options.reverse else _fuse(loaded, spec, options, report)
    report.keys_out = len(tensors)
    mode = "reverse" if options.reverse else ("lossless" if options.lossless else "fuse")
    metadata = output_metadata(loaded.metadata, tensors, {"hadakron.conversion": f"{spec.family} qkv {mode}"})
    return tensors, metadata, report


def fuse_loaded(loaded: LoadedAdapter, spec: QkvSpec, options: QkvOptions) -> tuple[LoadedAdapter, ConversionReport]:
    """:func:`convert_qkv` whose result is parsed again (for a further key-format conversion)."""
    from ..adapters import detect_convention, parse_adapter_state_dict

    tensors, metadata, report = convert_qkv(loaded, spec, options)
    parsed = parse_adapter_state_dict(tensors, metadata)
    choice = detect_convention(tensors.keys(), metadata, None, "auto", parsed.globals)
    return LoadedAdapter(loaded.path, tensors, metadata, parsed, choice), report


# ------------------------------------------------------------------------------------------- fuse


def _groups(loaded: LoadedAdapter, spec: QkvSpec) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    for module in loaded.parsed.modules:
        norm = _unet_norm(module)
        match = re.fullmatch(spec.split, norm) if norm is not None else None
        if match:
            groups.setdefault(match.group("base"), {})[match.group("part")] = module
    return groups


def _fuse(loaded: LoadedAdapter, spec: QkvSpec, options: QkvOptions, report: ConversionReport) -> dict:
    groups = _groups(loaded, spec)
    names: dict[str, str | None] = {}
    for module in loaded.parsed.modules:
        norm = _unet_norm(module)
        names[module] = None if norm is None else PREFIX + _rename(norm, spec.renames)
    fused_tensors: dict = {}
    for base, members in groups.items():
        parts = [_part(loaded, members.get(p)) for p in PARTS]
        if options.lossless and any(isinstance(p.adapter.weights, LoKrWeights) for p in parts if p.adapter):
            _keep_split(members, names, spec, report)
            continue
        for module in members.values():
            names[module] = ""  # consumed by the fused module
        fused_tensors.update(_fuse_group(base, parts, spec, options, report))
    out = rename_keys(loaded, {m: n for m, n in names.items() if n != ""}, "default", report, skip=_consumed(names))
    _record_renames(names, report)
    return _merged(out, fused_tensors)


def _merged(out: dict, new: dict) -> dict:
    clash = sorted(set(out) & set(new))
    if clash:
        raise AdapterFormatError(f"the file already has {clash[0]!r}, which the conversion would write")
    out.update(new)
    return out


def _consumed(names: dict[str, str | None]) -> set[str]:
    return {m for m, n in names.items() if n == ""}


def _record_renames(names: dict[str, str | None], report: ConversionReport) -> None:
    for module, new in names.items():
        if new and new != module:
            report.renamed.append((module, new))


def _part(loaded: LoadedAdapter, module: str | None) -> Part:
    if module is None:
        return Part(None)
    adapters = loaded.parsed.modules[module]
    if len(adapters) > 1:
        raise UnsupportedError(f"{module}: several algorithms on one q/k/v module cannot be fused")
    adapter = adapters[0]
    return Part(adapter, source_gamma(adapter, loaded.choice), loaded.tensors.get(module + ".alpha"))


def _keep_split(members: dict[str, str], names: dict, spec: QkvSpec, report: ConversionReport) -> None:
    table = NameTable(spec.family)
    for module in members.values():
        norm = _unet_norm(module)
        if spec.lossless_prefix.endswith("."):
            names[module] = spec.lossless_prefix + table.recover(norm, naming="trainer").dotted
        else:
            names[module] = spec.lossless_prefix + norm
    report.note(
        f"lossless: LoKr q/k/v kept split ({spec.lossless_prefix}…); HadaKron applies them exactly onto the "
        "fused qkv rows" + (", and so does ComfyUI's own loader" if spec.lossless_prefix.endswith(".") else "")
    )


def _fuse_group(base: str, parts: list[Part], spec: QkvSpec, options: QkvOptions, report) -> dict:
    present = [p for p in parts if p.adapter is not None]
    name = PREFIX + spec.fused.format(base=base)
    if any(p.adapter.dora_scale is not None for p in present):
        raise UnsupportedError(f"{name}: DoRA q/k/v cannot be fused (merge into the base instead)")
    shapes = {_shape([p.adapter]) for p in present}
    if len(shapes) > 1:
        raise AdapterFormatError(f"{name}: q/k/v modules have different shapes {sorted(shapes)}; cannot fuse")
    rows, cols = shapes.pop()
    algos = {p.adapter.algo for p in present}
    missing = [q for q, p in zip(PARTS, parts, strict=True) if p.adapter is None]
    if missing:
        report.note(f"{name}: no {'/'.join(missing)} module in the file; fused with zero rows")
    if algos == {"lora"}:
        tensors = fuse_lora(parts, rows, cols)
    elif algos == {"loha"}:
        tensors = fuse_loha(parts, rows, cols)
    else:
        rank, energy = options.truncation()
        tensors, result, exact = fuse_to_lora(parts, rows, cols, rank, energy)
        report.fits.append(LayerFit(name, result.rank, exact, result.kept_energy, result.rel_error))
    report.fused.append(f"{name} <- {'/'.join(sorted(algos))} q/k/v")
    return {name + suffix: value for suffix, value in tensors.items()}


# ------------------------------------------------------------------------------------------ split


def _split(loaded: LoadedAdapter, spec: QkvSpec, options: QkvOptions, report: ConversionReport) -> dict:
    names: dict[str, str | None] = {}
    split_tensors: dict = {}
    for module, adapters in loaded.parsed.modules.items():
        norm = _unet_norm(module)
        match = re.fullmatch(spec.fused_pattern, norm) if norm is not None else None
        if match is None:
            names[module] = None if norm is None else PREFIX + _rename(norm, spec.reverse_renames)
            continue
        names[module] = ""
        base = match.group("base")
        part_names = [PREFIX + spec.part.format(base=base, part=p) for p in PARTS]
        for adapter in adapters:
            for new, tensors in zip(part_names, _split_adapter(loaded, module, adapter, options, report), strict=True):
                split_tensors.update({new + suffix: value for suffix, value in tensors.items()})
        report.split.append(f"{module} -> {', '.join(part_names)}")
    out = rename_keys(loaded, {m: n for m, n in names.items() if n != ""}, "default", report, skip=_consumed(names))
    _record_renames(names, report)
    return _merged(out, split_tensors)


def _split_adapter(loaded: LoadedAdapter, module: str, adapter, options: QkvOptions, report) -> list[dict]:
    if adapter.dora_scale is not None:
        raise UnsupportedError(f"{module}: DoRA qkv cannot be split")
    if _shape([adapter])[0] % len(PARTS):
        raise AdapterFormatError(f"{module}: {_shape([adapter])[0]} rows do not split into equal q/k/v parts")
    w = adapter.weights
    gamma = source_gamma(adapter, loaded.choice)
    alpha = _lycoris_alpha(loaded, module, adapter, gamma)
    if isinstance(w, LoRAWeights):
        return split_lora(w, alpha)
    if isinstance(w, LoHaWeights):
        return split_loha(w, alpha)
    if isinstance(w, LoKrWeights) and lokr_splits_exactly(w) and (not w.is_full or abs(gamma - 1.0) < 1e-9):
        return split_lokr(w, alpha)
    rows, cols = _shape([adapter])
    rank, energy = options.truncation()
    results = split_to_lora(adapter, gamma, (rows, cols), rank, energy)
    for p, (_, result, exact) in zip(PARTS, results, strict=True):
        name = f"{module} [{p}]"
        report.fits.append(LayerFit(name, result.rank, exact, result.kept_energy, result.rel_error))
    report.note("LoKr whose w1 rows do not divide by 3 cannot stay LoKr when split: written as LoRA")
    return [tensors for tensors, _, _ in results]


def _lycoris_alpha(loaded: LoadedAdapter, module: str, adapter, gamma: float):
    """The stored alpha when it already gives ``gamma`` under LyCORIS rules, else a new one that does."""
    from .alphas import alpha_tensor, lycoris_gamma

    stored = loaded.tensors.get(module + ".alpha")
    w = adapter.weights
    if isinstance(w, LoKrWeights) and w.is_full:
        return stored
    if stored is not None and abs(lycoris_gamma(adapter, float(stored)) - gamma) <= 1e-6 * max(abs(gamma), 1e-30):
        return stored
    if stored is None and abs(gamma - 1.0) <= 1e-9:
        return None
    return alpha_tensor(gamma * w.rank)
