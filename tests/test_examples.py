"""The shipped example workflows: every node exists on a real server, and all four execute through
/prompt on the embedded default (the demo's flow, with the documented stand-in text conditioning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.run import run_demo

pytestmark = pytest.mark.server
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))


def test_all_examples_execute_on_the_embedded_default(tmp_path):
    result = run_demo(tmp_path / "base", steps=8)
    assert len(result["history"]) == 8 and all(p["loss"] == p["loss"] for p in result["history"])
    assert result["with"]["mean"] != result["without"]["mean"]  # the trained LoKr changes the sample
    assert "convert to comfy" in result["converted"] and "exact" in result["converted"]
    assert "mode svd" in result["merged"] and "kept energy" in result["merged"]
    assert "QKV fused" in result["zimage"]
    loras = result["base"] / "models" / "loras"
    assert (loras / "hadakron_demo_lokr.safetensors").exists() and (loras / "hadakron_demo_merged.safetensors").exists()


def test_examples_use_only_registered_nodes():
    from demo.server import comfy_server

    assert len(EXAMPLES) == 4
    with comfy_server(Path(__import__("tempfile").mkdtemp()), test_nodes=False) as server:
        info = server.object_info()
    for path in EXAMPLES:
        workflow = json.loads(path.read_text("utf-8"))
        missing = {n["type"] for n in workflow["nodes"]} - set(info)
        assert not missing, f"{path.name}: unknown node types {missing}"
