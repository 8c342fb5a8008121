"""Reading an adapter to convert and writing the result (atomic, never over the input)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..adapters import ParsedAdapter, detect_convention, parse_adapter_state_dict
from ..adapters.convention import CONVENTION_TAG, PRODUCER_TAG, ConventionChoice
from ..common.errors import AdapterFileError, HadaKronError, OutputExistsError
from ..common.tensor_files import load_tensor_file, save_tensor_file
from ..loading.source import _peft_config_beside
from .hashes import refresh_hashes

PRODUCER = f"hadakron {__version__}"
OUTPUT_CONVENTION = "lycoris"


@dataclass
class LoadedAdapter:
    """An adapter file's raw tensors and metadata, parsed, with its scale convention."""

    path: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    parsed: ParsedAdapter
    choice: ConventionChoice


def read_input(path: str | os.PathLike, convention: str = "auto") -> LoadedAdapter:
    """Load and parse ``path`` (a PEFT ``adapter_config.json`` beside it is honoured).

    Raises:
        HadaKronError: with the path, for unreadable files or inconsistent modules.
    """
    path = Path(path)
    tensors, metadata = load_tensor_file(path)
    try:
        peft = _peft_config_beside(path)
        parsed = parse_adapter_state_dict(tensors, metadata, peft)
        choice = detect_convention(tensors.keys(), metadata, peft, convention, parsed.globals)
    except HadaKronError as exc:
        raise exc.with_path(str(path)) from None
    if not parsed.modules:
        raise AdapterFileError("no LoRA/LoHa/LoKr/diff modules found (not an adapter file?)", path=str(path))
    return LoadedAdapter(str(path), tensors, dict(metadata), parsed, choice)


def output_metadata(metadata: dict[str, str], tensors: dict[str, torch.Tensor], extra: dict[str, str]) -> dict:
    """The input's metadata, HadaKron's tags and ``extra``, with sshs hashes recomputed if present."""
    out = {str(k): str(v) for k, v in metadata.items()}
    out[PRODUCER_TAG] = PRODUCER
    out[CONVENTION_TAG] = OUTPUT_CONVENTION
    out.update(extra)
    refresh_hashes(tensors, out)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_output(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    out_path: str | os.PathLike,
    input_path: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write the converted file atomically; never replaces the input, other files only with ``overwrite``."""
    out_path, input_path = Path(out_path), Path(input_path)
    if _same_file(out_path, input_path) or out_path.resolve() == input_path.resolve():
        raise OutputExistsError("refusing to write over the input file; choose another output name", path=out_path)
    if out_path.exists() and not overwrite:
        raise OutputExistsError("exists; allow overwriting (--overwrite) to replace it", path=str(out_path))
    return save_tensor_file(tensors, out_path, metadata, overwrite=overwrite)
