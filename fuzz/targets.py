"""Fuzz targets shared by the atheris harness and the hypothesis tests.

Each target feeds arbitrary input through one public engine entry point. The only exceptions
allowed out are HadaKron's own documented error types; anything else is a finding.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

from hadakron.adapters import detect_convention, module_scale
from hadakron.common.errors import HadaKronError
from hadakron.keymap import KeyResolver
from hadakron.loading import LoadOptions, parse_block_strengths, plan_adapter, read_adapter

SHAPES = {
    "diffusion_model.blocks.0.self_attn.q.weight": (8, 8),
    "diffusion_model.blocks.0.ffn.0.weight": (16, 8),
    "diffusion_model.layers.0.attention.qkv.weight": (24, 8),
    "diffusion_model.double_blocks.0.img_attn.qkv.weight": (24, 8),
}
RESOLVER = KeyResolver(SHAPES)
_TMP = Path(tempfile.mkdtemp(prefix="hadakron-fuzz-")) / "input.safetensors"


def adapter_file_target(data: bytes) -> None:
    """Raw bytes as a .safetensors adapter: read, parse, detect, plan, scale and build every ΔW."""
    _TMP.write_bytes(data)
    try:
        source = read_adapter(_TMP)
        patches, _report = plan_adapter(source, RESOLVER, LoadOptions(), strict_family=False)
        for patch in patches:
            module_scale(patch.adapter, source.convention.convention)
            patch.adapter.delta(RESOLVER.target_shape(patch.target))
    except HadaKronError:
        pass


def structured_file_bytes(header: dict, payload: bytes) -> bytes:
    """A well-framed safetensors file around an arbitrary header and payload."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def names_target(name: str) -> None:
    """Arbitrary module names through the resolver (must never raise)."""
    RESOLVER.resolve(name)
    RESOLVER.resolve(name, bias=True)


def text_target(text: str) -> None:
    """Arbitrary block-strength strings and metadata through their parsers."""
    try:
        parse_block_strengths(text)
    except HadaKronError:
        pass
    detect_convention([text], {"ss_network_module": text, "ss_network_args": text}, None)


def cleanup() -> None:
    if _TMP.exists():
        os.unlink(_TMP)
