"""Path guard: user-supplied names may only reach files inside allowed root folders.

Node inputs and HTTP routes pass names (``"my_loras/x.safetensors"``) that must stay inside
ComfyUI's input, output and model folders. The guard refuses NUL bytes, absolute paths, Windows
drive and UNC forms, ``..`` components and symlinks that resolve outside every root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import PathOutsideRootError

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_NAME_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\\]')


def check_relative_name(name: str) -> str:
    """Validate a relative name from user input and return it with ``/`` separators.

    Raises:
        PathOutsideRootError: for NUL bytes, absolute, drive or UNC paths and ``..`` parts.
    """
    if not isinstance(name, str) or not name.strip():
        raise PathOutsideRootError("empty path")
    if "\x00" in name:
        raise PathOutsideRootError("path contains a NUL byte", path=repr(name))
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _WINDOWS_DRIVE.match(normalised) or normalised.startswith("//"):
        raise PathOutsideRootError(
            "absolute paths are not allowed; give a name relative to a ComfyUI folder", path=name
        )
    if any(part == ".." for part in normalised.split("/")):
        raise PathOutsideRootError("'..' is not allowed in paths", path=name)
    return normalised


def resolve_inside(name: str, roots: Iterable[str | os.PathLike], must_exist: bool = True) -> Path:
    """Resolve ``name`` against each root in turn and return the first path that stays inside it.

    Symlinks are resolved before the containment check, so a link pointing outside a root is
    refused even though its own name looks harmless.

    Raises:
        PathOutsideRootError: if the name is unsafe or resolves outside every root.
        FileNotFoundError: if ``must_exist`` and no root holds the name.
    """
    relative = check_relative_name(name)
    root_list = [Path(r) for r in roots]
    escaped = False
    for root in root_list:
        real_root = Path(os.path.realpath(root))
        candidate = Path(os.path.realpath(real_root / relative))
        if not is_within(candidate, real_root):
            escaped = True
            continue
        if not must_exist or candidate.exists():
            return candidate
    if escaped:
        raise PathOutsideRootError("resolves outside the allowed folders (symlink?)", path=name)
    raise FileNotFoundError(f"{name}: not found in {', '.join(str(r) for r in root_list)}")


def is_within(path: Path, root: Path) -> bool:
    """True if ``path`` equals ``root`` or lies below it (both already resolved)."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def sanitize_output_name(prefix: str, default: str = "hadakron") -> str:
    """Turn a user's output prefix into a safe relative name (sub-folders allowed, no escapes).

    Mirrors ComfyUI's save nodes: the prefix may contain ``/`` sub-folders but never leaves the
    output folder; characters Windows forbids are replaced by ``_``.
    """
    relative = check_relative_name(prefix or default)
    parts = [_UNSAFE_NAME_CHARS.sub("_", p).strip().rstrip(".") for p in relative.split("/")]
    parts = [p for p in parts if p and p != "."]
    if not parts:
        return default
    return "/".join(parts)
