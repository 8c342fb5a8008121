"""A diffusion-model safetensors file seen through its header only: keys, shapes, dtypes, family.

ComfyUI's ``UNETLoader`` reads diffusion models whose keys carry ``model.diffusion_model.``,
``diffusion_model.`` or no prefix at all. HadaKron's resolver works on ``diffusion_model.`` keys,
so :class:`ModelFile` maps every diffusion-model key to that spelling and back. Nothing but the
header is read: inspecting or planning against a 28 GB model costs a few kilobytes of I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import AdapterFileError, UnsupportedError
from ..common.tensor_files import read_safetensors_header
from ..keymap import KeyResolver, detect_family_from_model_keys

RESOLVER_PREFIX = "diffusion_model."
# Longest first: a full checkpoint's UNet keys, then a bare diffusion-model file's.
MODEL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
BYPASS_HINT = "load the adapter with apply_mode=bypass instead of baking it"
# Block lists in the order ComfyUI's models register them, where that differs from name order.
# Per-block strengths number blocks over these lists in model order (as the loader node does on a
# live model); safetensors headers are sorted by name, so the order is restored here.
CONTAINER_ORDER: dict[str, tuple[str, ...]] = {
    "hunyuan_video": ("txt_in.individual_token_refiner.blocks", "double_blocks", "single_blocks"),
    "hunyuan_video_1_5": ("txt_in.individual_token_refiner.blocks", "double_blocks", "single_blocks"),
    "z_image": ("noise_refiner", "context_refiner", "layers"),
    "framepack": ("transformer_blocks", "single_transformer_blocks"),
}


@dataclass
class ModelFile:
    """Header facts of one model file.

    Attributes:
        path: the file.
        entries: raw header entries ``{key: {"dtype", "shape", "data_offsets"}}`` in file order.
        metadata: the file's ``__metadata__`` strings.
        prefix: the diffusion-model prefix found in the file (``""`` for bare keys).
        to_file_key: ``{diffusion_model.<path>: key as stored in the file}`` for diffusion-model keys.
        family: detected from key names alone (``None`` when unknown; the generic mapping is used).
    """

    path: str
    entries: dict
    metadata: dict[str, str]
    prefix: str
    to_file_key: dict[str, str] = field(default_factory=dict)
    family: str | None = None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{diffusion_model.<path>: shape}`` for every diffusion-model key."""
        return {norm: tuple(self.entries[key]["shape"]) for norm, key in self.to_file_key.items()}

    def dtype_code(self, resolver_key: str) -> str:
        """The safetensors dtype code (``BF16``, ``F8_E4M3`` …) of a resolver key."""
        return self.entries[self.to_file_key[resolver_key]]["dtype"]

    def resolver(self) -> KeyResolver:
        """A :class:`KeyResolver` over this file's shapes and family (no aliases: names alone)."""
        return KeyResolver(self.shapes, family=self.family, prefix=RESOLVER_PREFIX)


def open_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a diffusion model's safetensors header and normalise its key prefix.

    Raises:
        UnsupportedError: GGUF files or tensor types safetensors cannot describe (quantised
            formats), with a pointer to bypass mode.
        AdapterFileError: unreadable, truncated or corrupt files.
    """
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        raise UnsupportedError(f"GGUF models cannot be baked into; {BYPASS_HINT}", path=str(path))
    try:
        entries, metadata = read_safetensors_header(path)
    except AdapterFileError as exc:
        if "unsupported dtype" in exc.message:
            raise UnsupportedError(f"{exc.message} (quantised weights?); {BYPASS_HINT}", path=str(path)) from None
        raise
    prefix = _diffusion_prefix(entries)
    to_file_key = _normalised_keys(entries, prefix)
    if not to_file_key:
        raise AdapterFileError("no diffusion-model weights in this file", path=str(path))
    family = detect_family_from_model_keys(to_file_key)
    ordered = {k: to_file_key[k] for k in model_order(to_file_key, family)}
    return ModelFile(str(path), entries, dict(metadata), prefix, ordered, family)


def model_order(keys, family: str | None) -> list[str]:
    """``diffusion_model.`` keys in the order the family's model registers them (numbers numerically)."""
    containers = CONTAINER_ORDER.get(family or "", ())

    def rank(key: str) -> tuple:
        path = key[len(RESOLVER_PREFIX) :]
        slot = next((i for i, c in enumerate(containers) if path.startswith(c + ".")), len(containers))
        return (slot, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)])

    return sorted(keys, key=rank)


def _diffusion_prefix(entries: dict) -> str:
    for prefix in MODEL_PREFIXES:
        if any(key.startswith(prefix) for key in entries):
            return prefix
    return ""


def _normalised_keys(entries: dict, prefix: str) -> dict[str, str]:
    if prefix:
        return {RESOLVER_PREFIX + k[len(prefix) :]: k for k in entries if k.startswith(prefix)}
    return {RESOLVER_PREFIX + k: k for k in entries}
