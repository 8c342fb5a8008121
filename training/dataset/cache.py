"""On-disk cache of encoded latents and conditionings (safetensors, written atomically).

Latent files are keyed by the source file's content (and its control images'), the VAE identity
and every setting that changes the pixels; text files by the caption and the CLIP identity. Keys
are SHA-256 hex digests; files live at ``<root>/<latents|text>/<key[:2]>/<key>.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...common.errors import HadaKronError
from ...common.tensor_files import load_tensor_file, save_tensor_file

CACHE_VERSION = "1"
_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and modification time)."""
    stat = os.stat(path)
    memo = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def make_key(*parts) -> str:
    """Stable SHA-256 key of JSON-serialisable parts."""
    payload = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CachedClip:
    """One clip as stored: its latent and where it came from."""

    latent: torch.Tensor
    start: int
    frames: int
    size: tuple[int, int]


@dataclass
class CachedEntry:
    """Everything cached for one source file: its clips, control latents and a note."""

    clips: list[CachedClip]
    controls: list[torch.Tensor]
    note: str = ""


class DiskCache:
    """Latent and text caches below ``root``; ``root=None`` disables writing and reading."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def _load(self, kind: str, key: str) -> tuple[dict, dict] | None:
        if self.root is None:
            return None
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            return load_tensor_file(path)
        except HadaKronError:
            return None  # corrupt cache file: re-encode and overwrite it

    def load_entry(self, key: str) -> CachedEntry | None:
        """The cached clips of one source file, or ``None`` on a miss (or an unreadable file)."""
        loaded = self._load("latents", key)
        if loaded is None:
            return None
        tensors, meta = loaded
        try:
            clips_meta = json.loads(meta.get("hadakron.clips", "null"))
            clips = [
                CachedClip(tensors[f"clip.{i}"], int(c["start"]), int(c["frames"]), (int(c["width"]), int(c["height"])))
                for i, c in enumerate(clips_meta)
            ]
            controls = [tensors[f"control.{j}"] for j in range(int(meta.get("hadakron.controls", "0")))]
        except (KeyError, TypeError, ValueError):
            return None
        return CachedEntry(clips, controls, meta.get("hadakron.note", ""))

    def save_entry(self, key: str, entry: CachedEntry, source: str) -> None:
        """Store one source file's clips and control latents."""
        if self.root is None:
            return
        tensors = {f"clip.{i}": c.latent.detach().contiguous().cpu() for i, c in enumerate(entry.clips)}
        tensors.update({f"control.{j}": t.detach().contiguous().cpu() for j, t in enumerate(entry.controls)})
        clips = [{"start": c.start, "frames": c.frames, "width": c.size[0], "height": c.size[1]} for c in entry.clips]
        meta = {
            "hadakron.cache_version": CACHE_VERSION,
            "hadakron.source": source,
            "hadakron.clips": json.dumps(clips),
            "hadakron.controls": str(len(entry.controls)),
            "hadakron.note": entry.note,
        }
        save_tensor_file(tensors, self._path("latents", key), metadata=meta, overwrite=True)

    def load_conditioning(self, key: str) -> list | None:
        """A cached CONDITIONING, or ``None`` on a miss."""
        loaded = self._load("text", key)
        if loaded is None:
            return None
        tensors, meta = loaded
        try:
            return conditioning_from_tensors(tensors, json.loads(meta["hadakron.conditioning"]))
        except (KeyError, TypeError, ValueError):
            return None

    def save_conditioning(self, key: str, conditioning: list, caption: str) -> bool:
        """Store a CONDITIONING; ``False`` if it holds values safetensors cannot represent."""
        if self.root is None:
            return False
        packed = conditioning_to_tensors(conditioning)
        if packed is None:
            return False
        tensors, layout = packed
        meta = {"hadakron.cache_version": CACHE_VERSION, "hadakron.conditioning": json.dumps(layout)}
        meta["hadakron.caption"] = caption[:2000]
        save_tensor_file(tensors, self._path("text", key), metadata=meta, overwrite=True)
        return True


def conditioning_to_tensors(conditioning: list) -> tuple[dict, list] | None:
    """Split ComfyUI CONDITIONING ``[[cond, {extras}], …]`` into tensors and a JSON layout.

    Returns ``None`` when an extra is neither a tensor nor plain JSON (e.g. hook objects).
    """
    tensors, layout = {}, []
    for index, pair in enumerate(conditioning):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], torch.Tensor)):
            return None
        cond, extras = pair
        tensors[f"{index}.cond"] = cond.detach().contiguous().cpu()
        plain, tensor_keys = {}, []
        for name, value in (extras or {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.extra.{name}"] = value.detach().contiguous().cpu()
                tensor_keys.append(name)
            elif _is_plain_json(value):
                plain[name] = value
            else:
                return None
        layout.append({"plain": plain, "tensors": tensor_keys})
    return tensors, layout


def conditioning_from_tensors(tensors: dict, layout: list) -> list:
    """Inverse of :func:`conditioning_to_tensors`."""
    conditioning = []
    for index, part in enumerate(layout):
        extras = dict(part["plain"])
        extras.update({name: tensors[f"{index}.extra.{name}"] for name in part["tensors"]})
        conditioning.append([tensors[f"{index}.cond"], extras])
    return conditioning


def _is_plain_json(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v) for k, v in value.items())
    return False
