"""Adapter conversions (pure engine, no ComfyUI).

* :func:`convert_file` — key formats ``default`` (sd-scripts/musubi), ``other`` (diffusers style) and
  ``comfy`` (names ComfyUI's own loader reads), every key and all metadata kept (:mod:`.formats`);
* :func:`convert_qkv_file` — Z-Image / HunyuanVideo 1.5 split q/k/v <-> ComfyUI's fused qkv
  (:mod:`.qkv`, specs :data:`ZIMAGE_SPEC`, :data:`HV15_SPEC`).

Both return a :class:`ConversionReport`; nothing is written over an existing file unless asked.
"""

from __future__ import annotations

import os

from .formats import TARGETS, FormatOptions, convert_format
from .hv15 import HV15_SPEC
from .io import LoadedAdapter, read_input, write_output
from .qkv import QkvOptions, QkvSpec, convert_qkv
from .report import ConversionReport, LayerFit
from .zimage import ZIMAGE_SPEC

QKV_SPECS = {"z_image": ZIMAGE_SPEC, "hunyuan_video_1_5": HV15_SPEC}


def convert_file(
    source: str | os.PathLike, output: str | os.PathLike, options: FormatOptions, overwrite: bool = False
) -> ConversionReport:
    """Convert ``source`` to ``options.target`` and write ``output`` (atomic; never over ``source``)."""
    loaded = read_input(source)
    tensors, metadata, report = convert_format(loaded, options)
    report.output = str(write_output(tensors, metadata, output, source, overwrite))
    return report


def convert_qkv_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    spec: QkvSpec,
    options: QkvOptions,
    overwrite: bool = False,
) -> ConversionReport:
    """Fuse (or split with ``options.reverse``) q/k/v of ``source`` and write ``output``."""
    loaded = read_input(source)
    tensors, metadata, report = convert_qkv(loaded, spec, options)
    report.output = str(write_output(tensors, metadata, output, source, overwrite))
    return report


__all__ = [
    "HV15_SPEC",
    "QKV_SPECS",
    "TARGETS",
    "ZIMAGE_SPEC",
    "ConversionReport",
    "FormatOptions",
    "LayerFit",
    "LoadedAdapter",
    "QkvOptions",
    "QkvSpec",
    "convert_file",
    "convert_format",
    "convert_qkv",
    "convert_qkv_file",
    "read_input",
    "write_output",
]
