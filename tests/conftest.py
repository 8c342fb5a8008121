"""Shared fixtures. Only tests that request ``comfy`` (or ``comfy_server`` helpers) touch ComfyUI."""

from __future__ import annotations

import pytest
import torch

import comfy_runtime


def pytest_collection_modifyitems(config, items):
    # Tests using the in-process runtime get the `comfy` marker, so `-m "not comfy"` runs the pure engine suite.
    for item in items:
        if "comfy" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.comfy)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> comfy_runtime.ComfyRuntime:
    """Real ComfyUI 0.3.75 on CPU in this process, with HadaKron (and the test node pack) loaded.

    Attributes: ``comfy``, ``nodes``, ``folder_paths``, ``server``, ``base_dir``, ``pack_module``.
    """
    if not comfy_runtime.comfy_available():
        pytest.skip(f"ComfyUI runtime missing ({comfy_runtime.COMFY_DIR}); run `bash scripts/setup.sh`")
    return comfy_runtime.load_comfy(tmp_path_factory.mktemp("comfy_base"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared CPU run much faster single-threaded (and bitwise reproducibly)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
