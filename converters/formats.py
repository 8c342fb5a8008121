"""Key-format conversion: ``default`` (sd-scripts/musubi), ``other`` (diffusers style) and ``comfy``.

* ``default``: ``lora_unet_<module with . -> _>``; LoRA ``.lora_down/.lora_up.weight`` + ``.alpha``.
* ``other``: ``<diffusers_prefix>.<dotted module>``; LoRA ``.lora_A/.lora_B.weight`` with γ folded into
  both factors as √γ (no alpha, musubi ``convert_lora.py --target other``); LoHa/LoKr unchanged + ``.alpha``.
* ``comfy``: names ComfyUI's own loader maps for the family in 0.3.75 and newer:
  ``diffusion_model.<ComfyUI module path>``; Z-Image split q/k/v as ``diffusion_model.layers.N.attention.to_q``
  (mapped natively onto qkv row slices); HunyuanVideo 1.5 split q/k/v, which ComfyUI maps nowhere, are
  fused first (:mod:`.hv15`).

Dotted names are recovered from the family's module table (:mod:`.names`), never by string repair.
Every key survives: LoHa/LoKr tensors, Tucker cores, ``lokr_factor``, DoRA scales, unknown keys, and
all metadata (hashes recomputed). Alphas follow :mod:`.alphas` so every module keeps its effect.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters.keys import DIFFUSERS_SUFFIX, KOHYA_SUFFIX, split_key
from ..common.errors import AdapterFormatError, ConventionError
from ..keymap import detect_family_from_adapter, split_producer_prefix
from ..keymap.families import FAMILIES
from ..keymap.resolver import normalise
from .alphas import AlphaPlan, alpha_tensor, fold_tensor, plan_alpha
from .io import LoadedAdapter, output_metadata
from .names import NATIVE_SLICE_PREFIX, NameTable
from .report import ConversionReport

TARGETS = ("default", "other", "comfy")
DEFAULT_PREFIX = "lora_unet_"
COMFY_PREFIX = "diffusion_model."


@dataclass
class FormatOptions:
    """Target style, the diffusers prefix for ``other`` and an optional family override."""

    target: str
    diffusers_prefix: str = "diffusion_model"
    family: str | None = None

    def check(self) -> None:
        """Raise :class:`ConventionError` for an unknown target, family or an empty prefix."""
        if self.target not in TARGETS:
            raise ConventionError(f"unknown target {self.target!r}; use one of {', '.join(TARGETS)}")
        if self.family not in (None, "auto", *FAMILIES):
            raise ConventionError(f"unknown family {self.family!r}; use auto or one of {', '.join(FAMILIES)}")
        if self.target == "other" and not self.diffusers_prefix.strip(". "):
            raise ConventionError("diffusers_prefix must not be empty")


def detect_family(module_names) -> str | None:
    """The family an adapter targets, from its diffusion-model module names."""
    normalised = []
    for name in module_names:
        namespace, rest = split_producer_prefix(name)
        if namespace == "unet":
            normalised.append(normalise(rest))
    return detect_family_from_adapter(normalised)


class _Namer:
    """New module prefix for every module of one file, in one target style."""

    def __init__(self, options: FormatOptions, family: str | None, report: ConversionReport):
        self.options = options
        self.family = family
        self.table = NameTable(family)
        self.report = report

    def new_name(self, module: str) -> str | None:
        """The converted module prefix, or ``None`` when it cannot be mapped (kept unchanged)."""
        namespace, rest = split_producer_prefix(module)
        if namespace != "unet":
            self.report.note("text-encoder modules are kept unchanged (ComfyUI reads their names in every style)")
            return None
        norm = normalise(rest)
        if self.options.target == "default":
            return DEFAULT_PREFIX + norm
        if self.options.target == "other":
            dotted = self._dotted(rest, norm)
            return f"{self.options.diffusers_prefix.rstrip('.')}.{dotted}" if dotted else None
        return self._comfy(rest, norm)

    def _dotted(self, rest: str, norm: str) -> str | None:
        if "." in rest:
            return rest
        found = self.table.recover(norm)
        if found is not None:
            return found.dotted
        comfy, sliced = self.table.comfy_name(norm)
        if comfy and not sliced:
            self.report.note("modules missing from the trainer tables were written with ComfyUI's module names")
            return comfy
        return None

    def _comfy(self, rest: str, norm: str) -> str | None:
        comfy, sliced = self.table.comfy_name(norm)
        if comfy and not sliced:
            return COMFY_PREFIX + comfy
        if comfy and self.family in ("flux", "flux2"):
            self.report.note(
                "FLUX diffusers q/k/v names kept as they are: ComfyUI maps them onto the fused weights under "
                "transformer./lycoris_/lora_transformer_ prefixes"
            )
            return None
        if comfy and self.family in NATIVE_SLICE_PREFIX:
            dotted = rest if "." in rest else getattr(self.table.recover(norm, naming="trainer"), "dotted", None)
            if dotted:
                self.report.note(
                    "split q/k/v written as diffusers names, which ComfyUI maps natively onto the fused qkv "
                    "row slices (0.3.75 and newer): lossless, no fusion needed"
                )
                return NATIVE_SLICE_PREFIX[self.family] + dotted
        if comfy:
            self.report.note(
                f"{comfy}: split q/k/v of this family have no native ComfyUI mapping; run the QKV conversion "
                "(zimage-to-comfy / hv15-to-comfy) or load with HadaKron"
            )
        return None


def _suffix(key: str, module: str, family: str, role: str, target: str) -> str:
    if family == "lora" and role in ("up", "down"):
        return (DIFFUSERS_SUFFIX if target == "other" else KOHYA_SUFFIX)[(family, role)]
    if family in ("lora", "loha", "lokr", "full"):
        return KOHYA_SUFFIX[(family, role)]
    return key[len(module) :]  # common roles (DoRA scales, lokr_factor …) keep their own spelling


def _plans(loaded: LoadedAdapter, target: str) -> dict[str, AlphaPlan]:
    plans = {}
    for module, adapters in loaded.parsed.modules.items():
        lora_only = all(a.algo == "lora" for a in adapters)
        plans[module] = plan_alpha(adapters, loaded.choice, want_alpha=not (target == "other" and lora_only))
    return plans


def rename_keys(
    loaded: LoadedAdapter,
    names: dict[str, str | None],
    target: str,
    report: ConversionReport,
    skip: set[str] | frozenset = frozenset(),
) -> dict[str, object]:
    """All tensors under their new names, alphas planned and folded (the core of every conversion).

    Args:
        loaded: the parsed input.
        names: module -> new module prefix (``None`` or absent: keep the module's keys unchanged).
        target: ``default``/``other``/``comfy`` (decides LoRA suffixes).
        skip: modules whose keys are left out (replaced by the caller, e.g. fused q/k/v).
    """
    plans = _plans(loaded, target)
    out: dict[str, object] = {}
    alpha_done: set[str] = set()
    for key, tensor in loaded.tensors.items():
        split = split_key(key)
        module = split[0] if split else None
        if module in skip:
            continue
        if module not in loaded.parsed.modules:
            _put(out, key, tensor)
            continue
        _, family, role = split
        new = names.get(module)
        if new is None:  # unmapped module: every key written unchanged
            _put(out, key, tensor)
            continue
        plan = plans[module]
        if role == "alpha":
            if plan.alpha is None and not _has_weight_family(loaded, module):
                _put(out, new + ".alpha", tensor)
            continue
        value = fold_tensor(family, role, tensor, plan.folds.get(family, 1.0))
        _put(out, new + _suffix(key, module, family, role, target), value)
        if module not in alpha_done:
            alpha_done.add(module)
            _write_alpha(out, loaded, module, new, plan, report)
    return out


def _has_weight_family(loaded: LoadedAdapter, module: str) -> bool:
    return any(a.algo != "full" for a in loaded.parsed.modules[module])


def _write_alpha(out, loaded, module, new, plan: AlphaPlan, report) -> None:
    if plan.alpha is not None:
        value = loaded.tensors[module + ".alpha"] if plan.keep else alpha_tensor(plan.alpha)
        _put(out, new + ".alpha", value)
        if plan.synthesised:
            report.synthesised_alpha.append(f"{new}: alpha {plan.alpha:g}")
    folds = {algo: f for algo, f in plan.folds.items() if abs(f - 1.0) > 1e-6}
    if folds and plan.alpha is not None:
        report.folded.append(f"{new}: " + ", ".join(f"{algo} x{f:g}" for algo, f in folds.items()))


def _put(out: dict, key: str, value) -> None:
    if key in out:
        raise AdapterFormatError(f"two modules of the file map to the same output key {key!r}")
    out[key] = value


def convert_format(loaded: LoadedAdapter, options: FormatOptions) -> tuple[dict, dict, ConversionReport]:
    """Convert a parsed adapter to ``options.target``; returns ``(tensors, metadata, report)`` (nothing written)."""
    options.check()
    family = None if options.family in (None, "auto") else options.family
    family = family or detect_family(loaded.parsed.modules)
    report = ConversionReport(
        source=loaded.path, operation=f"convert to {options.target}", family=family, convention=loaded.choice.convention
    )
    report.keys_in = len(loaded.tensors)
    if family is None:
        report.note("family not detected: every family's module table was tried")
    if options.target == "comfy" and family == "hunyuan_video_1_5":
        loaded = _fuse_first(loaded, report)
    namer = _Namer(options, family, report)
    names = {module: namer.new_name(module) for module in loaded.parsed.modules}
    for module, new in names.items():
        if new is None and split_producer_prefix(module)[0] == "unet":
            report.kept.append(module)
        elif new != module:
            report.renamed.append((module, new))
    if options.target == "other" and "lora" in loaded.parsed.algo_counts():
        report.note("LoRA: alpha folded into lora_A/lora_B as sqrt(alpha/rank), no alpha keys (diffusers style)")
    tensors = rename_keys(loaded, names, options.target, report)
    report.keys_out = len(tensors)
    metadata = output_metadata(loaded.metadata, tensors, {"hadakron.conversion": options.target})
    return tensors, metadata, report


def _fuse_first(loaded: LoadedAdapter, report: ConversionReport) -> LoadedAdapter:
    """HunyuanVideo 1.5: fuse split q/k/v (ComfyUI maps them nowhere) before renaming."""
    from .hv15 import HV15_SPEC
    from .qkv import QkvOptions, fuse_loaded

    fused, sub = fuse_loaded(loaded, HV15_SPEC, QkvOptions())
    if sub.fused:
        report.note("HunyuanVideo 1.5 split q/k/v fused onto img_attn.qkv/txt_attn.qkv (as hv15-to-comfy)")
    report.fused += sub.fused
    report.fits += sub.fits
    report.notes += [n for n in sub.notes if n not in report.notes]
    return fused
