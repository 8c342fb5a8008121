"""The dataset node in a real ComfyUI server: core VAELoader (tiny WAN 2.1 VAE) -> dataset node -> PreviewAny."""

from __future__ import annotations

import pytest

from comfy_server import comfy_server
from test_dataset_engine import write_image
from tiny_models import write_tiny_wan_vae

pytestmark = [pytest.mark.server, pytest.mark.slow]

VAE_NAME = "hadakron_tiny_wan21_vae.safetensors"


def graph(trigger_word: str) -> dict:
    settings = {
        "folder": "hk_server_set",
        "width": 32,
        "height": 32,
        "enable_bucket": True,
        "bucket_no_upscale": False,
        "num_repeats": 1,
        "caption_extension": ".txt",
        "default_caption": "a photo",
        "trigger_word": trigger_word,
        "target_frames": "1",
        "frame_extraction": "head",
        "frame_stride": 1,
        "frame_sample": 1,
        "max_frames": 129,
        "source_fps": 0.0,
        "target_fps": 16.0,
        "cache": "on",
        "vae_batch_size": 4,
    }
    return {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "2": {"class_type": "HadaKronDatasetFromFolder", "inputs": {**settings, "vae": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


def test_dataset_node_through_prompt(comfy, tmp_path):
    base = tmp_path / "server_base"
    write_tiny_wan_vae(base / "models" / "vae" / VAE_NAME)
    data = base / "input" / "hk_server_set"
    write_image(data / "a.png", (32, 32))
    (data / "a.txt").write_text("a square")
    write_image(data / "b.png", (64, 16))
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with comfy_server(base, test_nodes=False, extra_args=["--disable-api-nodes"]) as server:
        info = server.object_info("HadaKronDatasetFromFolder")
        assert info["category"] == "HadaKron/train" and info["output"] == ["HADAKRON_DATASET", "STRING"]
        required = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in required.values())

        first = server.run_prompt(graph("sks"))
        summary = first["outputs"]["3"]["text"][0]
        assert summary.startswith("2 items") and "cache: cached 0, encoded 2" in summary
        assert "hk_server_set/broken.png" in summary
        assert first["outputs"]["2"]["text"] == [summary]
        assert len(list((base / "output" / "hadakron_cache" / "latents").rglob("*.safetensors"))) == 2

        second = server.run_prompt(graph("other"))  # a changed input re-runs the node; latents come from cache
        assert "cache: cached 2, encoded 0" in second["outputs"]["3"]["text"][0]
