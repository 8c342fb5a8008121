"""Atomic file writing: temp file in the target folder, flush, fsync, rename.

A reader (or a crash) sees either the previous file or the complete new one, never a partial
file. Every file HadaKron writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputExistsError

TEMP_PREFIX = ".hadakron-tmp-"
# ``.hadakron-tmp-<host>.<pid>-<random>.part``: the writer's host and PID let a later run tell a temp
# file of a writer that was killed (``kill -9`` cannot clean up) from one still being written.
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(?P<host>[A-Za-z0-9_-]*)\.(?P<pid>\d+)-[^.]*\.part$")


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
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{_host()}.{os.getpid()}-", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _chmod_like_open(handle.fileno(), dest)
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


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files in ``folder`` whose writer (a process on this host) no longer runs.

    A writer killed outright (``kill -9``, power loss) leaves its hidden ``.part`` file behind; the
    published files are never affected. Temp files of running writers, of other hosts, or (outside
    POSIX, where liveness cannot be checked safely) of anyone are kept. Returns the removed paths.
    """
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for name in os.listdir(folder):
        match = _TEMP_NAME.match(name)
        if match and match["host"] == _host() and not _pid_running(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
                removed.append(folder / name)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only (POSIX)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def _chmod_like_open(fd: int, dest: Path) -> None:
    """Give the temp file the mode a plain ``open`` would (mkstemp makes it 0600): the replaced file's
    mode when overwriting, else 0666 less the process umask."""
    if os.name != "posix":
        return
    try:
        mode = dest.stat().st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` sets it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


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
