"""HTTP routes under ``/hadakron/`` (registered once when ComfyUI loads the pack)."""

from __future__ import annotations

_REGISTERED = False


def register_routes() -> None:
    """Register the pack's routes on ComfyUI's server, if one is running."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    _REGISTERED = True
