"""Which modules get an adapter, and the names they are saved under (architectures.md §7).

Presets mirror musubi-tuner's target blocks and default excludes, written as regexes on ComfyUI
module paths (``re.fullmatch``, as musubi does on its own dotted paths). Where ComfyUI fuses what
musubi keeps separate (Z-Image and HunyuanVideo 1.5 q/k/v), one adapter per row slice of the fused
weight is trained and named as musubi names it, so the file is exact in every format; every name is
checked against the loader's rename tables (``keymap``) so it resolves back to the same weight.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..common.errors import ConventionError, UnsupportedError
from ..keymap import KeyResolver

LOG = logging.getLogger("hadakron")


@dataclass(frozen=True)
class Preset:
    """musubi's target blocks (regexes on block paths) and default excludes (on module paths)."""

    blocks: tuple[str, ...]
    excludes: tuple[str, ...]


_FLUX = Preset(
    (r"double_blocks\.\d+", r"single_blocks\.\d+"),
    (r".*(img_mod\.lin|txt_mod\.lin|modulation\.lin).*", r".*(norm).*"),
)
PRESETS: dict[str, Preset] = {
    "wan": Preset(
        (r"blocks\.\d+",), (r".*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*",)
    ),
    "qwen_image": Preset((r"transformer_blocks\.\d+",), (r".*(_mod_).*",)),
    "z_image": Preset(
        (r"layers\.\d+", r"noise_refiner\.\d+", r"context_refiner\.\d+"), (r".*(_modulation|_refiner).*",)
    ),
    "flux": _FLUX,
    "flux2": _FLUX,
    "hunyuan_video": Preset((r"double_blocks\.\d+", r"single_blocks\.\d+"), (r".*(img_mod|txt_mod|modulation).*",)),
    "hunyuan_video_1_5": Preset((r"double_blocks\.\d+",), (r".*(_in).*",)),
    "kandinsky5": Preset((r"visual_transformer_blocks\.\d+", r"text_transformer_blocks\.\d+"), (r".*modulation.*",)),
}

# ComfyUI module path -> musubi dotted name(s); several names = equal row slices of a fused weight.
_BLOCK = r"(layers|noise_refiner|context_refiner)\.(\d+)"
MUSUBI_NAMES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "z_image": (
        (_BLOCK + r"\.attention\.qkv", tuple(rf"\1.\2.attention.to_{p}" for p in "qkv")),
        (_BLOCK + r"\.attention\.out", (r"\1.\2.attention.to_out.0",)),
    ),
    "hunyuan_video": (
        (r"double_blocks\.(\d+)\.(img|txt)_mlp\.0", (r"double_blocks.\1.\2_mlp.fc1",)),
        (r"double_blocks\.(\d+)\.(img|txt)_mlp\.2", (r"double_blocks.\1.\2_mlp.fc2",)),
        (r"double_blocks\.(\d+)\.(img|txt)_mod\.lin", (r"double_blocks.\1.\2_mod.linear",)),
        (r"single_blocks\.(\d+)\.modulation\.lin", (r"single_blocks.\1.modulation.linear",)),
    ),
}
MUSUBI_NAMES["hunyuan_video_1_5"] = (
    (r"double_blocks\.(\d+)\.(img|txt)_attn\.qkv", tuple(rf"double_blocks.\1.\2_attn_{p}" for p in "qkv")),
    (r"double_blocks\.(\d+)\.(img|txt)_attn\.proj", (r"double_blocks.\1.\2_attn_proj",)),
) + MUSUBI_NAMES["hunyuan_video"]

SUPPORTED_FAMILIES = tuple(PRESETS)

# Norms whose input ComfyUI later updates in place (``img += …`` in the FLUX-style blocks that FLUX.1/2
# and HunyuanVideo/1.5 share): their input is cloned while training, or backward fails.
_FLUX_NORMS = r"(double_blocks|single_blocks)\.\d+\.(img_norm1|img_norm2|txt_norm1|txt_norm2|pre_norm)"
INPLACE_GUARDS = {family: _FLUX_NORMS for family in ("flux", "flux2", "hunyuan_video", "hunyuan_video_1_5")}


def inplace_guard_paths(modules: Iterable[tuple[str, torch.nn.Module]], family: str) -> list[str]:
    """Paths of the modules whose input must be cloned during training (see ``INPLACE_GUARDS``)."""
    pattern = INPLACE_GUARDS.get(family)
    if pattern is None:
        return []
    rx = re.compile(pattern)
    return [path for path, _ in modules if rx.fullmatch(path)]


@dataclass(frozen=True)
class TargetSpec:
    """One trained adapter: a (row slice of a) layer and its saved names.

    Attributes:
        path: ComfyUI module path under ``diffusion_model`` (``blocks.0.self_attn.q``).
        out_dim / in_dim / kernel: the (sliced) weight's shape; ``kernel`` empty for Linear.
        offset: ``(0, start, length)`` on a fused weight, else ``None``.
        musubi_name: musubi's dotted module name (``lora_unet_`` + it with ``.`` -> ``_``).
        comfy_name: the name ComfyUI's key map takes under ``diffusion_model.``.
    """

    path: str
    out_dim: int
    in_dim: int
    kernel: tuple[int, ...]
    offset: tuple[int, int, int] | None
    musubi_name: str
    comfy_name: str

    @property
    def is_conv(self) -> bool:
        """True for a conv layer (the spec has a kernel)."""
        return bool(self.kernel)

    @property
    def weight_key(self) -> str:
        """The ComfyUI parameter key of the (fused) weight."""
        return f"diffusion_model.{self.path}.weight"

    def key_prefix(self, key_format: str) -> str:
        """Tensor-name prefix in a file: ``lora_unet_<musubi name>`` or ``diffusion_model.<comfy name>``."""
        if key_format == "musubi":
            return "lora_unet_" + self.musubi_name.replace(".", "_")
        return "diffusion_model." + self.comfy_name


def require_supported(family: str | None, model_class: str) -> str:
    """The family, or :class:`UnsupportedError` naming what cannot be trained."""
    if family not in PRESETS:
        name = family or f"unknown ({model_class})"
        raise UnsupportedError(
            f"training is not supported for model family {name}; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family


def _compile_all(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ConventionError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from exc
    return out


def _kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return "conv"
    return None


def candidate_modules(modules: Iterable[tuple[str, torch.nn.Module]], family: str, config) -> list[str]:
    """Paths of the Linear (and, with ``train_conv``, conv) modules the config selects."""
    preset = PRESETS[family]
    blocks = _compile_all([rf"{b}\..+" for b in preset.blocks], "block pattern")
    excludes = _compile_all([*preset.excludes, *config.exclude_patterns], "exclude pattern")
    includes = _compile_all(config.include_patterns, "include pattern")
    user_in = _compile_all([config.include] if config.include.strip() else [], "include")
    user_ex = _compile_all([config.exclude] if config.exclude.strip() else [], "exclude")
    chosen, skipped_convs = [], []
    for path, module in modules:
        kind = _kind(module)
        if kind is None or not path:
            continue
        in_scope = config.target_preset == "all_linear" or any(b.fullmatch(path) for b in blocks)
        rescued = any(p.fullmatch(path) for p in includes) or any(p.search(path) for p in user_in)
        if not (in_scope or rescued):
            continue
        excluded = any(p.fullmatch(path) for p in excludes) or any(p.search(path) for p in user_ex)
        if excluded and not rescued:
            continue
        if kind == "conv" and not config.train_conv:
            skipped_convs.append(path)
            continue
        chosen.append(path)
    if skipped_convs:
        LOG.warning(
            "HadaKron train: skipped %d conv layers (enable train_conv): %s", len(skipped_convs), skipped_convs[:4]
        )
    return chosen


def musubi_names(family: str, path: str) -> tuple[str, ...]:
    """musubi's dotted name(s) for a ComfyUI module path (several = row slices of a fused weight)."""
    for pattern, templates in MUSUBI_NAMES.get(family, ()):
        match = re.fullmatch(pattern, path)
        if match:
            return tuple(match.expand(t) for t in templates)
    return (path,)


def build_specs(paths: list[str], shapes: dict[str, tuple[int, ...]], family: str) -> list[TargetSpec]:
    """One :class:`TargetSpec` per trained slice, each checked against the loader's rename tables."""
    resolver = KeyResolver(shapes, family=family)
    specs = []
    for path in paths:
        shape = tuple(shapes[f"diffusion_model.{path}.weight"])
        names = musubi_names(family, path)
        rows = shape[0] // len(names)
        for index, name in enumerate(names):
            offset = None if len(names) == 1 else (0, index * rows, rows)
            comfy_name = path if len(names) == 1 else name
            spec = TargetSpec(path, rows, shape[1], tuple(shape[2:]), offset, name, comfy_name)
            _check_round_trip(resolver, spec)
            specs.append(spec)
    return specs


def _check_round_trip(resolver: KeyResolver, spec: TargetSpec) -> None:
    target = resolver.resolve(spec.key_prefix("musubi"))
    if target is None or target.key != spec.weight_key or target.offset != spec.offset:
        raise UnsupportedError(
            f"internal naming error: {spec.key_prefix('musubi')} resolves to "
            f"{None if target is None else (target.key, target.offset)}, expected {spec.weight_key} {spec.offset}"
        )
