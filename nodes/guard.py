"""Path guard and error wrapping for node inputs (ComfyUI's folders only; one clear message)."""

from __future__ import annotations

import folder_paths

from ..common.errors import HadaKronError
from ..common.paths import check_relative_name, resolve_inside


class HadaKronNodeError(RuntimeError):
    """Raised from nodes so ComfyUI shows one clear line (never a server crash)."""


def adapter_path(name: str) -> str:
    """Full path of an adapter inside ComfyUI's ``loras`` folders (escapes refused)."""
    check_relative_name(name)
    return str(resolve_inside(name, folder_paths.get_folder_paths("loras")))


def model_folder_path(folder: str, name: str) -> str:
    """Full path of a file inside one of ComfyUI's model folder types (e.g. ``diffusion_models``)."""
    return str(resolve_inside(name, folder_paths.get_folder_paths(folder)))


def run_guarded(work):
    """Run ``work()``, turning HadaKron's own errors into a one-line node error."""
    try:
        return work()
    except HadaKronError as exc:
        raise HadaKronNodeError(f"HadaKron: {exc}") from exc
    except FileNotFoundError as exc:
        raise HadaKronNodeError(f"HadaKron: {exc}") from exc
