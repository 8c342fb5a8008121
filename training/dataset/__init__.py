"""Dataset engine for in-graph training: folders or musubi TOML configs of images and videos with
captions, bucketed like musubi-tuner, VAE/CLIP-encoded once and cached on disk.

Pure engine (torch, numpy; PIL and av imported lazily where files are decoded); the ComfyUI node
lives in ``nodes/dataset.py``. The result is a :class:`hadakron.training.data.AdapterDataset`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...common.errors import DatasetError
from .buckets import RESOLUTION_STEP, BucketSelector, divisible_by, resize_to_bucket
from .build import BuildOptions, build_dataset, collect_entries
from .cache import DiskCache, file_digest
from .captions import decode_caption_bytes, finalize_caption, read_caption
from .config import load_dataset_config
from .encode import ClipEncoder, VaeEncoder, state_dict_fingerprint
from .frames import clip_positions
from .musubi_cache import MUSUBI_LATENT_FORMATS, MusubiCacheReader
from .sources import Problems, display_name
from .spec import FRAME_EXTRACTIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DatasetSpec, MediaEntry


def specs_for_source(source: Path, base: Path, roots: list[Path], defaults: DatasetSpec, problems: Problems):
    """Dataset specs for a resolved source: a folder (one spec from ``defaults``) or a ``.toml`` config.

    Raises:
        DatasetError: the source is neither a folder nor a TOML file.
    """
    label = display_name(source, base)
    if source.is_file() and source.suffix.lower() == ".toml":
        return load_dataset_config(source, roots, base, defaults, problems)
    if source.is_dir():
        return [dataclasses.replace(defaults, directory=source).validate(label)]
    raise DatasetError("not a folder or a .toml dataset config", path=label)


__all__ = [
    "FRAME_EXTRACTIONS",
    "IMAGE_EXTENSIONS",
    "MUSUBI_LATENT_FORMATS",
    "RESOLUTION_STEP",
    "VIDEO_EXTENSIONS",
    "BucketSelector",
    "BuildOptions",
    "ClipEncoder",
    "DatasetSpec",
    "DiskCache",
    "MediaEntry",
    "MusubiCacheReader",
    "Problems",
    "VaeEncoder",
    "build_dataset",
    "clip_positions",
    "collect_entries",
    "decode_caption_bytes",
    "divisible_by",
    "file_digest",
    "finalize_caption",
    "load_dataset_config",
    "read_caption",
    "resize_to_bucket",
    "specs_for_source",
    "state_dict_fingerprint",
]
