"""Apply one adapter file to a MODEL (and CLIP) the way the loader and merge nodes need."""

from __future__ import annotations

from dataclasses import dataclass

from ..loading import LoadOptions, plan_adapter, read_adapter
from ..loading.report import LoadReport
from .model_info import clip_resolver, unet_resolver
from .patches import add_bypass_patches, add_weight_patches


@dataclass
class ApplyRequest:
    """Everything a caller chooses for one adapter."""

    path: str
    strength_model: float = 1.0
    strength_clip: float = 1.0
    convention: str = "auto"
    mode: str = "patch"  # "patch" | "bypass"
    prefer_lycoris: bool = False
    include: str = ""
    exclude: str = ""
    block_strengths: dict | None = None
    allow_nonfinite: bool = False


def apply_adapter(model, clip, request: ApplyRequest) -> tuple[object, object, LoadReport]:
    """Return ``(model clone, clip clone, report)`` with the adapter applied lazily.

    The originals are never modified: patches go on clones, evaluated by ComfyUI at load time.
    """
    source = read_adapter(request.path, request.convention, request.allow_nonfinite)
    backend = "lycoris" if request.prefer_lycoris else "native"
    if request.prefer_lycoris:
        from ..adapters.lycoris_backend import _functional

        _functional()  # fail early, with a clear message, if lycoris-lora is missing
    options = LoadOptions(
        include=request.include, exclude=request.exclude, block_strengths=request.block_strengths or {}
    )
    new_model, report = model, None
    if model is not None:
        resolver = unet_resolver(model)
        planned, report = plan_adapter(source, resolver, options, strict_family=clip is None)
        new_model = model.clone()
        if request.mode == "bypass" and backend == "native":
            fallback = add_bypass_patches(new_model, planned, request.strength_model, resolver.shapes)
            if fallback:
                report.notes.append(f"{len(fallback)} DoRA/set/bias modules used weight patches in bypass mode")
        else:
            add_weight_patches(new_model, planned, request.strength_model, backend)
    new_clip = clip
    if clip is not None:
        new_clip, report = _apply_clip(clip, source, options, request, backend, report)
    return new_model, new_clip, report


def _apply_clip(clip, source, options: LoadOptions, request: ApplyRequest, backend: str, report):
    resolver = clip_resolver(clip)
    clip_options = LoadOptions(include=options.include, exclude=options.exclude, namespace="clip")
    planned, clip_report = plan_adapter(source, resolver, clip_options, strict_family=False)
    new_clip = clip.clone()
    add_weight_patches(new_clip.patcher, planned, request.strength_clip, backend)
    if report is None:
        return new_clip, clip_report
    matched_clip = {m for m, _, _ in clip_report.matched}
    report.matched += clip_report.matched
    report.unmatched = [u for u in report.unmatched if u.split(" [")[0] not in matched_clip]
    report.other_namespace = [n for n in report.other_namespace if n not in matched_clip]
    report.patches += clip_report.patches
    return new_clip, report
