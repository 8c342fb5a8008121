"""HTTP routes under ``/hadakron/`` (also served under ``/api/hadakron/``).

* ``GET /hadakron/inspect?file=<name in loras>`` — header-level summary of an adapter (JSON);
  names are resolved through the path guard (ComfyUI's ``loras`` folders only) and the work runs
  in a worker thread, so large files never block the server's event loop.
* ``GET /hadakron/train/history?node=<id>`` — the loss history of a training run (for page reloads).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..common.errors import HadaKronError
from ..loading.inspect import inspect_file
from .guard import adapter_path

LOG = logging.getLogger("hadakron")
_REGISTERED = False


async def inspect_route(request: web.Request) -> web.Response:
    name = request.query.get("file", "")
    try:
        path = adapter_path(name)
        info = await asyncio.to_thread(inspect_file, path)
    except (HadaKronError, FileNotFoundError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    info["file"] = name
    return web.json_response(info)


async def history_route(request: web.Request) -> web.Response:
    node = request.query.get("node", "")
    try:
        from .train import training_history
    except ImportError:
        return web.json_response({"node": node, "history": []})
    return web.json_response({"node": node, "history": training_history(node)})


def register_routes() -> None:
    """Register the pack's routes on ComfyUI's running server (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    instance.routes.get("/hadakron/inspect")(inspect_route)
    instance.routes.get("/hadakron/train/history")(history_route)
    _REGISTERED = True
