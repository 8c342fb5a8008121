"""Real browser checks (headless Debian Chromium via playwright-core) against a real ComfyUI server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from comfy_server import comfy_server
from hadakron.common.tensor_files import save_tensor_file
from tiny_models import write_tiny_wan_file, write_tiny_wan_vae

pytestmark = [pytest.mark.server, pytest.mark.browser]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
SCRIPT = REPO / "tests" / "browser" / "ui_check.mjs"


def _browser_ready() -> str | None:
    if not Path("/usr/bin/chromium").exists():
        return "chromium missing (scripts/setup.sh --browser installs it)"
    if not (REPO / "node_modules" / "playwright-core").exists() or shutil.which("node") is None:
        return "playwright-core/node missing (scripts/setup.sh --browser installs it)"
    return None


def _test_adapter(folder: Path) -> str:
    tensors = {
        "lora_unet_blocks_0_self_attn_q.lokr_w1": torch.randn(8, 8),
        "lora_unet_blocks_0_self_attn_q.lokr_w2_a": torch.randn(16, 4),
        "lora_unet_blocks_0_self_attn_q.lokr_w2_b": torch.randn(4, 16),
        "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0),
    }
    save_tensor_file(tensors, folder / "ui_test_lokr.safetensors", {"modelspec.trigger_phrase": "sks"}, overwrite=True)
    return "ui_test_lokr.safetensors"


def _training_workflow(server) -> Path:
    """The training example on the embedded default, rendered with this server's node definitions."""
    from demo import assets
    from demo.examples import train_demo
    from demo.workflows import build_ui_workflow

    assets.write_dataset(server.base_dir)
    tiny = server.base_dir / "models"
    write_tiny_wan_file(tiny / "diffusion_models" / assets.DEMO_UNET)
    write_tiny_wan_vae(tiny / "vae" / assets.DEMO_VAE)
    workflow = build_ui_workflow(
        train_demo(assets.DEMO_DATASET, assets.DEMO_UNET, assets.DEMO_VAE), server.object_info()
    )
    path = ARTIFACTS / "ui-training-workflow.json"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(workflow))
    return path


def test_search_loader_panel_and_training_chart(comfy, tmp_path):
    reason = _browser_ready()
    if reason:
        pytest.skip(reason)
    base = tmp_path / "base"
    for sub in ("diffusion_models", "vae", "loras"):
        (base / "models" / sub).mkdir(parents=True, exist_ok=True)
    name = _test_adapter(base / "models" / "loras")
    with comfy_server(base) as server:
        workflow = _training_workflow(server)
        proc = subprocess.run(
            ["node", str(SCRIPT), server.url, str(ARTIFACTS), name, str(workflow)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=500,
        )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    results = json.loads([line for line in proc.stdout.splitlines() if line.startswith("UI-RESULTS ")][-1][11:])
    assert "HadaKronLoadAdapter" in results["registered"]
    panel = results["loaderPanel"]
    assert "lokr: 1" in panel and "alphas: 2: 1" in panel and "sks" in panel
    assert (ARTIFACTS / "loader-panel.png").stat().st_size > 10_000
    assert results["chartPoints"] >= 2 and (ARTIFACTS / "training-chart.png").stat().st_size > 10_000
