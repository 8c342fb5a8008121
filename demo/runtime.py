"""Load the real ComfyUI 0.3.75 tree (``<repo>/.comfyui``, built by scripts/setup.sh) into the test process.

Only tests that request the ``comfy`` fixture (tests/conftest.py) import ComfyUI; engine tests never do.
``prepare_base_dir`` is stdlib-only and shared with the server harness (tests/comfy_server.py).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
# HADAKRON_COMFY_DIR points the harness at another ComfyUI tree (compatibility checks against newer releases).
COMFY_DIR = Path(os.environ.get("HADAKRON_COMFY_DIR", REPO_ROOT / ".comfyui"))
PACK_DIR_NAME = "HadaKron"
TEST_PACK_DIR_NAME = "HadaKronTestNodes"
TEST_PACK_SRC = REPO_ROOT / "demo" / "node_pack"
MODEL_SUBDIRS = ("diffusion_models", "loras", "vae", "text_encoders", "checkpoints")


def comfy_available() -> bool:
    """True when scripts/setup.sh has extracted the ComfyUI tree."""
    return (COMFY_DIR / "comfyui_version.py").is_file() and (COMFY_DIR / "main.py").is_file()


def prepare_base_dir(base_dir: Path, *, test_nodes: bool = True) -> Path:
    """Create a ComfyUI ``--base-directory`` layout with the pack symlinked into ``custom_nodes/``.

    Args:
        base_dir: folder to populate (created if missing).
        test_nodes: also link the test-only node pack demo/node_pack as ``HadaKronTestNodes``.

    Returns:
        The absolute base directory.
    """
    base_dir = Path(base_dir).resolve()
    for sub in ("custom_nodes", "input", "output", "temp", "user/default", *(f"models/{m}" for m in MODEL_SUBDIRS)):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    links = {PACK_DIR_NAME: REPO_ROOT}
    if test_nodes:
        links[TEST_PACK_DIR_NAME] = TEST_PACK_SRC
    for name, target in links.items():
        link = base_dir / "custom_nodes" / name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    settings = base_dir / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        # Without it the frontend opens a Templates dialog over the canvas on first load.
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base_dir


@dataclass(frozen=True)
class ComfyRuntime:
    """ComfyUI modules as imported into this process, plus where the pack ended up."""

    comfy: ModuleType
    nodes: ModuleType
    folder_paths: ModuleType
    server: ModuleType
    prompt_server: object
    base_dir: Path
    # The pack as ComfyUI executed it (module name is its custom_nodes path); None if its import raised.
    pack_module: ModuleType | None
    # comfy_extras files that failed to import (torchaudio ones are expected on this runtime).
    builtin_import_failed: tuple[str, ...] = field(default_factory=tuple)

    def node_class(self, node_id: str) -> type:
        """A registered node class by id (KeyError with a hint if missing)."""
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[node_id]
        except KeyError:
            raise KeyError(f"node {node_id!r} is not registered in this ComfyUI process") from None


_RUNTIME: ComfyRuntime | None = None


def get_runtime() -> ComfyRuntime:
    """The runtime loaded by ``load_comfy`` (the ``comfy`` fixture); raises if ComfyUI is not loaded."""
    if _RUNTIME is None:
        raise RuntimeError("ComfyUI is not loaded in this process: request the `comfy` fixture first")
    return _RUNTIME


def _put_comfy_first_on_sys_path() -> None:
    comfy_dir = str(COMFY_DIR)
    if comfy_dir in sys.path:
        sys.path.remove(comfy_dir)
    # First, so ComfyUI's top-level `nodes`/`server`/`utils` win over same-named folders in the repo root.
    sys.path.insert(0, comfy_dir)
    clash = sys.modules.get("nodes")
    if clash is not None and not str(getattr(clash, "__file__", "")).startswith(comfy_dir):
        raise RuntimeError(f"a foreign top-level `nodes` module is already imported: {clash!r}")


def _configure_args(base_dir: Path, whitelist: list[str]) -> None:
    if "comfy.model_management" in sys.modules or "folder_paths" in sys.modules:
        raise RuntimeError("comfy.model_management/folder_paths were imported before the CPU args were set")
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base_dir)
    args.disable_all_custom_nodes = True
    args.whitelist_custom_nodes = whitelist


def _find_pack_module(nodes: ModuleType, folder_paths: ModuleType) -> ModuleType | None:
    if PACK_DIR_NAME not in nodes.LOADED_MODULE_DIRS:
        return None
    for root in folder_paths.get_folder_paths("custom_nodes"):
        module = sys.modules.get(os.path.join(root, PACK_DIR_NAME).replace(".", "_x_"))
        if module is not None:
            return module
    return None


def load_comfy(base_dir: Path, *, test_nodes: bool = True) -> ComfyRuntime:
    """Import ComfyUI on CPU with only this pack (and the test pack) as custom nodes. Once per process.

    Args:
        base_dir: an empty temp folder used as ComfyUI's base directory (ignored on later calls).
        test_nodes: also load demo/node_pack (synthetic conditioning etc.).

    Returns:
        The loaded ``ComfyRuntime``; later calls return the same object.
    """
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    if not comfy_available():
        raise RuntimeError(f"ComfyUI tree missing at {COMFY_DIR}: run `bash scripts/setup.sh`")
    base_dir = prepare_base_dir(base_dir, test_nodes=test_nodes)
    _put_comfy_first_on_sys_path()
    whitelist = [PACK_DIR_NAME] + ([TEST_PACK_DIR_NAME] if test_nodes else [])
    _configure_args(base_dir, whitelist)

    # As main.py does: cache ComfyUI's `utils` package before nodes.py puts `.comfyui/comfy` first on
    # sys.path (after that, `import utils` would find comfy/utils.py and app.frontend_management breaks).
    importlib.import_module("utils.extra_config")
    import comfy.lora  # noqa: F401
    import comfy.model_management  # noqa: F401  (after the args: decides the device at import)
    import comfy.model_patcher  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.utils  # noqa: F401

    folder_paths = importlib.import_module("folder_paths")
    nodes = importlib.import_module("nodes")
    server = importlib.import_module("server")
    # A PromptServer instance lets packs register routes / call send_sync at import, as in the real app.
    # Its loop stays open (never run) so send_sync's call_soon_threadsafe keeps working.
    loop = asyncio.new_event_loop()
    prompt_server = server.PromptServer(loop)
    failed = loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))

    _RUNTIME = ComfyRuntime(
        comfy=sys.modules["comfy"],
        nodes=nodes,
        folder_paths=folder_paths,
        server=server,
        prompt_server=prompt_server,
        base_dir=base_dir,
        pack_module=_find_pack_module(nodes, folder_paths),
        builtin_import_failed=tuple(failed or ()),
    )
    return _RUNTIME
