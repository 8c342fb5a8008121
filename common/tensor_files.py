"""Reading and writing adapter/model tensor files safely.

* safetensors headers are parsed by hand first (size, nesting, dtypes, offsets) so corrupt or
  hostile files get a precise :class:`AdapterFileError` instead of a crash;
* pickled formats (.pt .ckpt .bin .pth) are loaded with ``torch.load(weights_only=True)`` only;
* every write goes through the atomic writer; :func:`write_safetensors_streaming` writes one
  tensor at a time so a whole model never needs to sit in memory.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy
import torch

from .atomic import atomic_open
from .errors import AdapterFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = {".pt", ".ckpt", ".bin", ".pth", ".pkl"}

DTYPE_TO_ST = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        DTYPE_TO_ST[getattr(torch, _name)] = _code
ST_TO_DTYPE = {code: dtype for dtype, code in DTYPE_TO_ST.items()}


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return ``(tensor_entries, metadata)`` from a safetensors file without reading tensor data.

    ``tensor_entries`` maps names to ``{"dtype", "shape", "data_offsets"}``.

    Raises:
        AdapterFileError: truncated file, oversized or malformed header, bad offsets.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header_len = _header_length(handle.read(8), size, path)
            header_bytes = handle.read(header_len)
    except OSError as exc:
        raise AdapterFileError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from exc
    return _checked_header(header_bytes, size - 8 - header_len, path)


def _header_length(raw_len: bytes, size: int, path: Path) -> int:
    if len(raw_len) < 8:
        raise AdapterFileError("too short to be a safetensors file", path=str(path))
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len > MAX_HEADER_BYTES or header_len + 8 > size:
        raise AdapterFileError(
            f"header length {header_len} does not fit a {size}-byte file (truncated or not safetensors)",
            path=str(path),
        )
    return header_len


def _checked_header(header_bytes: bytes, data_len: int, path: Path) -> tuple[dict, dict[str, str]]:
    header = _parse_header_json(header_bytes, path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterFileError("__metadata__ must map strings to strings", path=str(path))
    _check_entries(header, data_len, path)
    return header, metadata


def _parse_header_json(header_bytes: bytes, path: Path) -> dict:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AdapterFileError(f"corrupt safetensors header ({type(exc).__name__})", path=str(path)) from exc
    if not isinstance(header, dict):
        raise AdapterFileError("safetensors header is not a JSON object", path=str(path))
    return header


def _check_entries(header: dict, data_len: int, path: Path) -> None:
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise AdapterFileError(f"tensor entry {name!r} is not an object", path=str(path))
        problem = _entry_problem(entry.get("dtype"), entry.get("shape"), entry.get("data_offsets"), data_len)
        if problem:
            raise AdapterFileError(f"tensor {name!r} {problem}", path=str(path))


def _entry_problem(dtype, shape, offsets, data_len: int) -> str | None:
    itemsize = _ITEMSIZE.get(dtype) if isinstance(dtype, str) else None
    if itemsize is None:
        return f"has unsupported dtype {dtype!r}"
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        return f"has an invalid shape {shape!r}"
    if type(offsets) is not list or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        return "has invalid data offsets"
    start, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= start <= end <= data_len or end - start != numel * itemsize:
        return "data does not fit the file (truncated?)"
    return None


_ITEMSIZE = {code: torch.tensor([], dtype=dtype).element_size() for code, dtype in ST_TO_DTYPE.items()}


def load_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and metadata from a safetensors or (weights-only) pickle file.

    Returns:
        ``(state_dict, metadata)``; metadata is empty for pickled files.

    Raises:
        AdapterFileError: for any unreadable, truncated, corrupt or unsafe file.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle_weights_only(path)
    if sys.byteorder != "little":  # safetensors data is little-endian; let the library convert
        from safetensors.torch import load_file

        return load_file(str(path)), dict(read_safetensors_header(path)[1])
    entries, metadata, base = _read_whole_safetensors(path)
    tensors = {
        name: _view_tensor(base, *entry["data_offsets"], ST_TO_DTYPE[entry["dtype"]], entry["shape"])
        for name, entry in entries.items()
    }
    return tensors, dict(metadata)


def _read_whole_safetensors(path: Path) -> tuple[dict, dict[str, str], torch.Tensor]:
    """Checked header, metadata and the data region as one uint8 tensor, read with one pass over the file.

    The data is read straight into an uninitialised buffer (no zero-fill pass before the read).
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header_len = _header_length(handle.read(8), size, path)
            header_bytes = handle.read(header_len)
            data = numpy.empty(size - 8 - header_len, dtype=numpy.uint8)
            if handle.readinto(memoryview(data)) != data.size:
                raise AdapterFileError("file changed while reading (truncated)", path=str(path))
    except OSError as exc:
        raise AdapterFileError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from exc
    entries, metadata = _checked_header(header_bytes, data.size, path)
    return entries, metadata, torch.from_numpy(data)


def _view_tensor(base: torch.Tensor, start: int, end: int, dtype: torch.dtype, shape: list) -> torch.Tensor:
    """``base[start:end]`` (bytes) viewed as ``dtype``/``shape``: every tensor of a file shares one buffer.

    A tensor whose offset is not a multiple of its element size is copied, so all are aligned.
    """
    if end == start:
        return torch.empty(shape, dtype=dtype)
    chunk = base[start:end]
    if start % _ITEMSIZE[DTYPE_TO_ST[dtype]]:
        chunk = chunk.clone()
    return chunk.view(dtype).view(shape)


def _load_pickle_weights_only(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise AdapterFileError(
            f"refused: not loadable with the weights-only loader (unsafe or corrupt pickle: {type(exc).__name__})",
            path=str(path),
        ) from exc
    meta = obj.get("__metadata__") if isinstance(obj, dict) else None
    metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AdapterFileError("pickle does not hold a dict of tensors", path=str(path))
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise AdapterFileError("pickle holds no tensors", path=str(path))
    return tensors, metadata  # metadata as save_tensor_file writes it for .pt, so `auto` reads HadaKron's tag


def save_tensor_file(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Atomically save ``tensors`` as safetensors (or a weights-only ``.pt`` when the name asks)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        if metadata:
            payload["__metadata__"] = dict(metadata)
        with atomic_open(path, overwrite=overwrite) as handle:
            torch.save(payload, handle)
        return path
    specs = [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    return write_safetensors_streaming(path, specs, lambda name: tensors[name], metadata, overwrite)


def write_safetensors_streaming(
    path: str | os.PathLike,
    specs: Iterable[tuple[str, torch.dtype, tuple]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a safetensors file one tensor at a time.

    Args:
        specs: ``(name, dtype, shape)`` for every tensor, in file order.
        produce: called once per name, in order; must return a tensor of the declared dtype and shape.
    """
    specs = list(specs)
    header, offset = {}, 0
    for name, dtype, shape in specs:
        nbytes = _numel(shape) * torch.tensor([], dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with atomic_open(path, overwrite=overwrite) as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for name, dtype, shape in specs:
            _write_tensor(handle, produce(name), name, dtype, shape)
    return Path(path)


def _write_tensor(handle: BinaryIO, tensor: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple) -> None:
    if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, declared {dtype} {shape}")
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    if flat.numel():
        handle.write(flat.view(torch.uint8).numpy().tobytes())


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
