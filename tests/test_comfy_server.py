"""Real ComfyUI 0.3.75 server on CPU: the pack imports cleanly, its nodes are registered, a tiny WAN graph samples."""

from __future__ import annotations

import ast
import json
import sys

import pytest

from comfy_runtime import PACK_DIR_NAME, REPO_ROOT, TEST_PACK_DIR_NAME
from comfy_server import ComfyServerError, comfy_server
from tiny_models import write_tiny_wan_file

pytestmark = [pytest.mark.server, pytest.mark.slow]

TINY_WAN_NAME = "hadakron_tiny_wan21.safetensors"
TEST_NODE_IDS = ("HadaKronTestSyntheticConditioning", "HadaKronTestLatentStats")
# comfy_extras modules that fail only because torchaudio is deliberately not installed (runtime.md §1.1).
TOLERATED_BUILTIN_FAILURES = ("nodes_audio.py", "nodes_audio_encoder.py")
PACK_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint", "did not return")


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    base = tmp_path_factory.mktemp("server_base")
    write_tiny_wan_file(base / "models" / "diffusion_models" / TINY_WAN_NAME)
    with comfy_server(base) as srv:
        yield srv


def declared_node_ids(comfy) -> tuple[str, ...] | None:
    """``HADAKRON_NODE_IDS`` from the pack's nodes/__init__.py (literal via AST, else the imported module)."""
    init = REPO_ROOT / "nodes" / "__init__.py"
    if not init.is_file():
        return None
    for stmt in ast.parse(init.read_text(encoding="utf-8")).body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else target
        if isinstance(target, ast.Name) and target.id == "HADAKRON_NODE_IDS" and stmt.value is not None:
            try:
                return tuple(ast.literal_eval(stmt.value))
            except ValueError:
                break
    if comfy.pack_module is None:
        return None
    module = sys.modules.get(comfy.pack_module.__name__ + ".nodes")
    ids = getattr(module, "HADAKRON_NODE_IDS", None)
    return None if ids is None else tuple(ids)


def test_server_is_comfyui_0_3_75_on_cpu(server):
    stats = server.get_json("/system_stats")
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert [d["type"] for d in stats["devices"]] == ["cpu"]


def test_pack_imports_without_failure(server):
    lines = server.custom_node_import_lines(PACK_DIR_NAME)
    assert lines, f"no import line for custom_nodes/{PACK_DIR_NAME}\n{server.log_tail()}"
    if any("lack of NODE_CLASS_MAPPINGS" in line for line in lines):
        pytest.skip("pack imports but registers no nodes yet (no NODE_CLASS_MAPPINGS / comfy_entrypoint)")
    failed = [line for line in lines if any(marker in line for marker in PACK_FAILURE_MARKERS)]
    assert not failed, "\n".join(failed) + "\n" + server.log_tail(120)


def test_no_unexpected_import_failures(server):
    test_pack = server.custom_node_import_lines(TEST_PACK_DIR_NAME)
    assert test_pack and not any("IMPORT FAILED" in line for line in test_pack), "\n".join(test_pack)
    pack_lines = set(server.custom_node_import_lines(PACK_DIR_NAME))
    others = [
        line
        for line in server.log_text().splitlines()
        if "IMPORT FAILED" in line and line not in pack_lines and not line.rstrip().endswith(TOLERATED_BUILTIN_FAILURES)
    ]
    assert not others, "\n".join(others)


def test_declared_nodes_are_registered(server, comfy):
    ids = declared_node_ids(comfy)
    if ids is None:
        pytest.skip("nodes/__init__.py does not define HADAKRON_NODE_IDS yet")
    info = server.object_info()
    missing = [node_id for node_id in ids if node_id not in info]
    assert not missing, f"not in /object_info: {missing}\n{server.log_tail()}"
    wrong = {n: info[n].get("python_module") for n in ids if info[n].get("python_module") != "custom_nodes.HadaKron"}
    assert not wrong, f"registered by another module: {wrong}"


def test_test_nodes_are_registered(server):
    info = server.object_info()
    for node_id in TEST_NODE_IDS:
        assert info[node_id]["python_module"] == f"custom_nodes.{TEST_PACK_DIR_NAME}"
    assert server.object_info("HadaKronTestSyntheticConditioning")["output"] == ["CONDITIONING"]


def tiny_wan_graph(steps: int = 2) -> dict:
    """UNETLoader(tiny WAN 2.1) -> KSampler(euler/simple, cfg 1) on a 32x32x1 latent -> latent stats."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_WAN_NAME, "weight_dtype": "default"}},
        "2": {"class_type": "HadaKronTestSyntheticConditioning", "inputs": {"seed": 1, "length": 8}},
        "3": {"class_type": "HadaKronTestSyntheticConditioning", "inputs": {"seed": 2, "length": 8}},
        "4": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 32, "height": 32, "length": 1, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 0,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "HadaKronTestLatentStats", "inputs": {"samples": ["5", 0]}},
    }


def test_tiny_wan_graph_samples(server):
    assert TINY_WAN_NAME in server.get_json("/models/diffusion_models")
    entry = server.run_prompt(tiny_wan_graph(), timeout=180)
    stats = json.loads(entry["outputs"]["6"]["text"][0])
    assert stats["shape"] == [1, 16, 1, 4, 4]
    assert stats["finite"]
    assert stats["std"] > 0


def test_unknown_node_is_rejected(server):
    with pytest.raises(ComfyServerError, match="invalid_prompt|node_errors"):
        server.post_prompt({"1": {"class_type": "NoSuchNodeHadaKron", "inputs": {}}})
