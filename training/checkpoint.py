"""Adapter files, resume sidecars, rotation and LoKr factor precedence (training.md §7, formats.md §14).

Names (musubi): ``<output_name>-step00000010.safetensors`` for checkpoints, ``<output_name>.safetensors``
for the final file; ``.pt`` when the output name ends in ``.pt``. Each file written by a run gets a
sidecar ``<file stem>.hkstate`` (a weights-only ``torch.save`` of the trainer state) that ComfyUI's
model lists ignore. Everything goes through ``common.atomic``; nothing is overwritten unless asked.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.atomic import atomic_open, atomic_write_bytes
from ..common.errors import AdapterFileError
from ..common.paths import sanitize_output_name
from ..common.tensor_files import save_tensor_file

LOG = logging.getLogger("hadakron")

STATE_SUFFIX = ".hkstate"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class OutputNames:
    """Where a run writes: ``folder/stem-stepN.ext`` and ``folder/stem.ext``."""

    folder: Path
    stem: str
    ext: str

    def final(self) -> Path:
        """``<folder>/<stem><ext>``."""
        return self.folder / f"{self.stem}{self.ext}"

    def step(self, step: int) -> Path:
        """``<folder>/<stem>-step<8 digits><ext>`` (musubi)."""
        return self.folder / f"{self.stem}-step{step:08d}{self.ext}"

    def step_files(self) -> list[tuple[int, Path]]:
        """Existing step checkpoints of this output name, oldest first."""
        pattern = re.compile(re.escape(Path(self.stem).name) + r"-step(\d{8})" + re.escape(self.ext) + "$")
        parent = (self.folder / self.stem).parent
        if not parent.is_dir():
            return []
        found = [(int(m.group(1)), parent / name) for name in os.listdir(parent) if (m := pattern.match(name))]
        return sorted(found)


def output_names(loras_folder: str | Path, output_name: str) -> OutputNames:
    """Sanitise ``output_name`` (sub-folders allowed) and split off a ``.safetensors``/``.pt`` ending."""
    name = sanitize_output_name(output_name, default="hadakron_adapter")
    ext = ".safetensors"
    for candidate in (".safetensors", ".pt"):
        if name.lower().endswith(candidate):
            name, ext = name[: -len(candidate)], candidate
    return OutputNames(Path(loras_folder), name, ext)


def state_path(adapter_path: str | Path) -> Path:
    """The resume sidecar beside an adapter file."""
    path = Path(adapter_path)
    return path.with_name(path.stem + STATE_SUFFIX)


def save_adapter_file(path: Path, tensors: dict, metadata: dict[str, str], overwrite: bool) -> Path:
    """Write safetensors (bytes identical to ``safetensors.torch.save``, so the hashes match) or .pt."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        return atomic_write_bytes(path, save(tensors, metadata=metadata), overwrite=overwrite)
    return save_tensor_file(tensors, path, metadata, overwrite=overwrite)


def save_state(path: Path, state: dict, overwrite: bool = True) -> Path:
    """Atomically write a trainer state sidecar."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_open(path, overwrite=overwrite) as handle:
        handle.write(buffer.getvalue())
    return path


def load_state(path: str | Path) -> dict:
    """Read a sidecar with the weights-only loader."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(
            "no HadaKron training state beside this file (was it saved by this node?)", path=str(path)
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several error types for bad pickles
        raise AdapterFileError(f"unreadable training state ({type(exc).__name__}: {exc})", path=str(path)) from exc


def rotate(names: OutputNames, keep_last_n: int) -> list[Path]:
    """Delete all but the newest ``keep_last_n`` step checkpoints (and their sidecars)."""
    if keep_last_n <= 0:
        return []
    removed = []
    for _, path in names.step_files()[:-keep_last_n]:
        for victim in (path, state_path(path)):
            if victim.exists():
                victim.unlink()
                removed.append(victim)
    return removed


def save_dtype(name: str) -> torch.dtype:
    """torch dtype for a ``save_precision`` name."""
    return _DTYPES[name]


def resolve_factor(explicit: int | None, buffer: int | None, metadata: int | None) -> int:
    """LoKr factor precedence: explicit > ``lokr_factor`` buffer > ``ss_lokr_factor`` > −1 (with warnings)."""
    persisted = buffer if buffer is not None else metadata
    if buffer is not None and metadata is not None and buffer != metadata:
        LOG.warning(
            "HadaKron train: lokr_factor buffer %s and ss_lokr_factor %s disagree; using the buffer", buffer, metadata
        )
    if explicit is not None:
        if persisted is not None and persisted != explicit:
            LOG.warning(
                "HadaKron train: explicit factor=%s differs from persisted factor=%s. Using explicit.",
                explicit,
                persisted,
            )
        return explicit
    if buffer is not None:
        return buffer
    if metadata is not None:
        LOG.info("HadaKron train: using factor=%s from ss_lokr_factor metadata", metadata)
        return metadata
    LOG.warning("HadaKron train: no LoKr factor persisted; assuming factor=-1")
    return -1
