"""Training as a workflow through a real ComfyUI 0.3.75 server: data -> HadaKronTrainAdapter -> KSampler.

Graph 1 feeds native LATENT/CONDITIONING (EmptyHunyuanLatentVideo + synthetic conditioning); graph 2
starts from an image folder through HadaKronDatasetFromFolder (tiny WAN VAE) when that node is
registered. Both sample the trained MODEL with KSampler and check the saved file.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from comfy_server import comfy_server
from graphs import ksampler, tiny_wan_inputs
from tiny_models import write_tiny_wan_file, write_tiny_wan_vae

pytestmark = [pytest.mark.server, pytest.mark.slow]

WAN = "hk_train_tiny_wan.safetensors"
VAE = "hk_train_tiny_wan_vae.safetensors"
TRAIN = {"steps": 3, "network_dim": 4, "learning_rate": 1e-3, "save_every_n_steps": 2, "overwrite": True}


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    base = tmp_path_factory.mktemp("train_server")
    write_tiny_wan_file(base / "models" / "diffusion_models" / WAN)
    write_tiny_wan_vae(base / "models" / "vae" / VAE)
    folder = base / "input" / "hk_ds"
    folder.mkdir(parents=True)
    for index, color in enumerate(((200, 30, 30), (30, 30, 200))):
        Image.new("RGB", (64, 64), color).save(folder / f"img{index}.png")
        (folder / f"img{index}.txt").write_text(f"a {index} square")
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # tiny models on a shared CPU: one thread is far faster
    try:
        with comfy_server(base) as srv:
            yield srv
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def _defaults(server, node_id: str) -> dict:
    required = server.object_info(node_id)["input"]["required"]
    return {name: spec[1]["default"] for name, spec in required.items() if len(spec) > 1 and "default" in spec[1]}


def _graph(server, data_nodes: dict, data_inputs: dict, name: str) -> dict:
    train = _defaults(server, "HadaKronTrainAdapter") | TRAIN | {"output_name": name}
    return {
        **tiny_wan_inputs(WAN),
        **data_nodes,
        "7": {
            "class_type": "HadaKronTrainAdapter",
            "inputs": train | {"model": ["1", 0], "positive": ["2", 0]} | data_inputs,
        },
        "8": ksampler(["7", 0], seed=0, steps=2),
        "9": {"class_type": "HadaKronTestLatentStats", "inputs": {"samples": ["8", 0]}},
    }


def _check(server, entry: dict, name: str) -> None:
    stats = json.loads(entry["outputs"]["9"]["text"][0])
    assert stats["shape"] == [1, 16, 1, 4, 4] and stats["finite"]
    assert "3 steps" in entry["outputs"]["7"]["text"][0]
    loras = server.base_dir / "models" / "loras"
    assert (loras / f"{name}.safetensors").is_file() and (loras / f"{name}-step00000002.safetensors").is_file()


def test_native_latents_train_then_sample(server):
    entry = server.run_prompt(_graph(server, {}, {"latents": ["4", 0]}, "srv/native"), timeout=240)
    _check(server, entry, "srv/native")
    assert "HadaKronTrainAdapter" in server.object_info() and "HadaKronSaveAdapter" in server.object_info()


def test_dataset_folder_train_then_sample(server):
    if "HadaKronDatasetFromFolder" not in server.object_info():
        pytest.skip("HadaKronDatasetFromFolder is not part of this build")
    dataset = _defaults(server, "HadaKronDatasetFromFolder") | {"folder": "hk_ds", "width": 64, "height": 64}
    nodes = {
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "6": {"class_type": "HadaKronDatasetFromFolder", "inputs": dataset | {"vae": ["5", 0]}},
    }
    entry = server.run_prompt(_graph(server, nodes, {"dataset": ["6", 0]}, "srv/folder"), timeout=240)
    _check(server, entry, "srv/folder")
