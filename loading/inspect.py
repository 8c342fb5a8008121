"""Header-level inspection of an adapter file (for the web panel and quick listings).

Reads the safetensors header and, by seeking to their offsets, only the bytes of the scalar
``alpha``/``lokr_factor`` tensors: no weight data is read or mapped, so it is cheap for any file size.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path

import torch

from ..adapters.keys import GLOBAL_KEYS, split_key
from ..common.errors import AdapterFileError
from ..common.tensor_files import ST_TO_DTYPE, read_safetensors_header
from ..keymap import detect_family_from_adapter, split_producer_prefix
from ..keymap.resolver import normalise
from .source import detect_producer

HIGHLIGHT_KEYS = (
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_output_name",
    "ss_lokr_factor",
    "modelspec.title",
    "modelspec.architecture",
    "modelspec.trigger_phrase",
    "ss_tag_frequency",
    "hadakron.producer",
    "hadakron.convention",
)


def inspect_file(path: str | Path) -> dict:
    """Summarise an adapter file from its header: algorithms, ranks, alphas, factor, family, metadata.

    Raises:
        AdapterFileError: the file is not a readable safetensors file.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise AdapterFileError("only .safetensors files can be inspected without loading them", path=str(path))
    header, metadata = read_safetensors_header(path)
    modules: dict[str, dict[str, list]] = {}
    for key, entry in header.items():
        split = split_key(key)
        if split:
            module, family, role = split
            modules.setdefault(module, {}).setdefault(family, {})[role] = entry["shape"]
    scalars = _read_scalars(path, header, [k for k in header if k.endswith(".alpha") or k in GLOBAL_KEYS])
    return _summary(path, header, metadata, modules, scalars)


def _read_scalars(path: Path, header: dict, keys: list[str]) -> dict[str, float]:
    """Values of the one-element tensors among ``keys``, read by seeking to their (validated) offsets.

    Never maps or reads the rest of the file: ``safe_open`` would mmap all of it, which fails for files
    larger than the memory the OS will map (and is pointless for a few scalars).
    """
    scalars = [k for k in keys if math.prod(header[k]["shape"]) == 1]
    if not scalars:
        return {}
    values = {}
    try:
        with open(path, "rb") as handle:
            data_start = 8 + struct.unpack("<Q", handle.read(8))[0]
            for key in scalars:
                start, end = header[key]["data_offsets"]
                handle.seek(data_start + start)
                raw = bytearray(handle.read(end - start))
                values[key] = float(torch.frombuffer(raw, dtype=ST_TO_DTYPE[header[key]["dtype"]]).float()[0])
    except (OSError, ValueError, RuntimeError) as exc:  # a file that changed since its header was read
        raise AdapterFileError(f"cannot read scalar tensors: {exc}", path=str(path)) from exc
    return values


def _summary(path: Path, header: dict, metadata: dict, modules: dict, scalars: dict) -> dict:
    algos, ranks = Counter(), Counter()
    for roles in modules.values():
        for family, shapes in roles.items():
            if family == "common":
                continue
            algos[family] += 1
            rank = _rank_from_shapes(family, shapes)
            ranks["full" if rank is None else str(rank)] += 1
    alphas = Counter(f"{v:g}" for k, v in scalars.items() if k.endswith(".alpha"))
    names = [normalise(split_producer_prefix(m)[1]) for m in modules]
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "tensors": len(header),
        "modules": sum(1 for roles in modules.values() if set(roles) - {"common"}),
        "algorithms": dict(algos),
        "ranks": dict(ranks),
        "alphas": dict(alphas),
        "lokr_factor": scalars.get("lokr_factor"),
        "family": detect_family_from_adapter(names),
        "producer": detect_producer(header.keys(), metadata, None),
        "metadata": {k: _short(metadata[k]) for k in HIGHLIGHT_KEYS if k in metadata},
    }


def _rank_from_shapes(family: str, shapes: dict[str, list]) -> int | None:
    if family == "lora" and "down" in shapes:
        return shapes["down"][0]
    if family == "loha" and "w1b" in shapes:
        return shapes["w1b"][0]
    if family == "lokr":
        if "w2b" in shapes:
            return shapes["w2b"][0]
        if "w1b" in shapes:
            return shapes["w1b"][0]
    return None


def _short(value: str, limit: int = 300) -> str:
    try:
        parsed = json.loads(value)
        if isinstance(parsed, dict) and len(value) > limit:
            return json.dumps(dict(list(parsed.items())[:10]))[:limit]
    except (json.JSONDecodeError, TypeError):
        pass
    return value[:limit]
