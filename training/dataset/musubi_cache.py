"""Reading musubi-tuner's latent and text-encoder caches (training.md §6) for the same family.

musubi stores latents already normalised by the family's latent format (e.g. WAN's per-channel
mean/std); ComfyUI models apply that normalisation themselves (``process_latent_in``), so the
node layer supplies ``denormalize(format_name, latent)`` (ComfyUI's ``latent_formats.X().process_out``)
and only families whose musubi normalisation equals ComfyUI's are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from ...common.errors import HadaKronError
from ...common.tensor_files import load_tensor_file
from .cache import CachedClip, CachedEntry
from .spec import MediaEntry

# musubi architecture code -> ComfyUI latent format whose process_in equals musubi's normalisation.
MUSUBI_LATENT_FORMATS = {
    "wan": "Wan21",
    "qi": "Wan21",
    "qie": "Wan21",
    "fk": "Flux",
    "zi": "Flux",
    "hv": "HunyuanVideo",
    "fp": "HunyuanVideo",
}
# musubi architecture code -> text-encoder cache key prefixes (main embedding, pooled vector).
MUSUBI_TEXT_KEYS = {
    "wan": ("varlen_t5_", None),
    "zi": ("varlen_llm_embed_", None),
    "qi": ("varlen_vl_embed_", None),
    "qie": ("varlen_vl_embed_", None),
    "fk": ("t5_vec_", "clip_l_pooler_"),
    "fp": ("llama_vec_", "clip_l_pooler_"),
}
_LATENT_NAME = re.compile(
    r"^(?P<stem>.+?)(?:_(?P<start>\d{5})-(?P<frames>\d{3}))?_(?P<w>\d{4})x(?P<h>\d{4})_(?P<arch>[a-z0-9]+)$"
)
_LATENT_KEY = re.compile(r"^latents_(\d+)x(\d+)x(\d+)_[a-z0-9]+$")

Denormalize = Callable[[str, torch.Tensor], torch.Tensor]


class MusubiCacheReader:
    """Finds and converts an entry's musubi cache files; every refusal comes with a reason."""

    def __init__(self, denormalize: Denormalize, latent_channels: int | None, latent_ndim: int):
        self.denormalize = denormalize
        self.latent_channels = latent_channels
        self.latent_ndim = latent_ndim  # per item: 3 for image VAEs, 4 for video VAEs

    def read(self, entry: MediaEntry) -> tuple[CachedEntry | None, list | None, str]:
        """``(cached latents, conditioning or None, reason)``; ``None`` latents mean "not usable"."""
        folder = entry.musubi_cache_dir
        if folder is None or not folder.is_dir():
            return None, None, "no musubi cache folder"
        files = _latent_files(folder, entry.path.stem, entry.kind)
        if not files:
            return None, None, "no musubi latent cache file"
        archs = {arch for _, arch, _ in files}
        if len(archs) != 1:
            return None, None, f"musubi caches for several architectures ({', '.join(sorted(archs))})"
        arch = archs.pop()
        if arch not in MUSUBI_LATENT_FORMATS:
            return None, None, f"musubi architecture {arch!r} is not supported for cache reuse"
        clips = []
        for path, _, meta in files:
            clip, reason = self._clip(path, arch, meta)
            if clip is None:
                return None, None, reason
            clips.append(clip)
        return CachedEntry(clips, []), self._conditioning(folder, entry.path.stem, arch), ""

    def _clip(self, path: Path, arch: str, meta: dict) -> tuple[CachedClip | None, str]:
        try:
            tensors, _ = load_tensor_file(path)
        except HadaKronError as exc:
            return None, f"musubi cache unreadable: {exc.message}"
        keys = sorted(k for k in tensors if _LATENT_KEY.match(k))
        if not keys:
            return None, f"{path.name}: no latents_<F>x<H>x<W>_<dtype> tensor"
        latent = self._fit(tensors[keys[0]].to(torch.float32))
        if latent is None:
            return None, f"{path.name}: latent shape {tuple(tensors[keys[0]].shape)} does not fit this VAE"
        latent = self.denormalize(MUSUBI_LATENT_FORMATS[arch], latent.unsqueeze(0))[0]
        return CachedClip(latent, meta["start"], meta["frames"], meta["size"]), ""

    def _fit(self, latent: torch.Tensor) -> torch.Tensor | None:
        if latent.ndim == self.latent_ndim - 1 and self.latent_ndim == 4:
            latent = latent.unsqueeze(1)
        elif latent.ndim == self.latent_ndim + 1 and latent.shape[1] == 1:
            latent = latent.squeeze(1)
        if latent.ndim != self.latent_ndim:
            return None
        if self.latent_channels is not None and latent.shape[0] != self.latent_channels:
            return None
        return latent

    def _conditioning(self, folder: Path, stem: str, arch: str) -> list | None:
        path = folder / f"{stem}_{arch}_te.safetensors"
        if arch not in MUSUBI_TEXT_KEYS or not path.is_file():
            return None
        try:
            tensors, _ = load_tensor_file(path)
        except HadaKronError:
            return None
        main, pooled = MUSUBI_TEXT_KEYS[arch]
        cond = _first_with_prefix(tensors, main)
        if cond is None:
            return None
        extras = {}
        pooled_tensor = _first_with_prefix(tensors, pooled) if pooled else None
        if pooled_tensor is not None:
            extras["pooled_output"] = pooled_tensor.to(torch.float32).reshape(1, -1)
        return [[cond.to(torch.float32).reshape(1, cond.shape[-2] if cond.ndim > 1 else 1, -1), extras]]


def _first_with_prefix(tensors: dict, prefix: str) -> torch.Tensor | None:
    names = sorted(k for k in tensors if k.startswith(prefix))
    return tensors[names[0]] if names else None


def _latent_files(folder: Path, stem: str, kind: str) -> list[tuple[Path, str, dict]]:
    found = []
    for path in sorted(folder.glob(f"{_glob_escape(stem)}_*.safetensors")):
        match = _LATENT_NAME.match(path.stem)
        if not match or match.group("stem") != stem or path.stem.endswith("_te"):
            continue
        is_clip = match.group("start") is not None
        if is_clip != (kind == "video"):
            continue
        start = int(match.group("start") or 0)
        frames = int(match.group("frames") or 1)
        size = (int(match.group("w")), int(match.group("h")))
        found.append((path, match.group("arch"), {"start": start, "frames": frames, "size": size}))
    return found


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
