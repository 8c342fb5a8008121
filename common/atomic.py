"""Atomic file writing: temp file in the target folder, flush, fsync, rename.

A reader (or a crash) sees either the previous file or the complete new one, never a partial
file. Every file HadaKron writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputExistsError

TEMP_PREFIX = ".hadakron-tmp-"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for binary writing; publish it on success.

    Args:
        path: final destination.
        overwrite: replace an existing file; otherwise :class:`OutputExistsError` is raised
            before anything is written (and checked again just before the rename).

    On any exception (including ``KeyboardInterrupt`` and ComfyUI's interrupt) the temp file
    is removed and the destination is untouched.
    """
    dest = Path(path)
    _refuse_existing(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _refuse_existing(dest, overwrite)
        os.replace(tmp_name, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], overwrite: bool = False) -> Path:
    """Call ``write(handle)`` on a temp file and atomically move it to ``path``."""
    with atomic_open(path, overwrite=overwrite) as handle:
        write(handle)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda handle: handle.write(data), overwrite=overwrite)


def _refuse_existing(dest: Path, overwrite: bool) -> None:
    if not overwrite and dest.exists():
        raise OutputExistsError("file exists; choose another name or allow overwriting", path=str(dest))


def _fsync_dir(folder: Path) -> None:
    # A directory fsync makes the rename itself durable; not supported on every platform.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
