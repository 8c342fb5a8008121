"""README's first command: the whole of HadaKron on a real ComfyUI server, no model weights needed.

1. generate the embedded default (tiny WAN 2.1 model + VAE that ComfyUI's own loaders detect, a
   small captioned image dataset, two small adapters);
2. start a real ComfyUI server with HadaKron installed (plus the demo-only stand-in conditioning node:
   no text encoder can be tiny, so text conditioning is seeded random tensors — never shipped);
3. queue the example training workflow (dataset folder -> Train LoKr -> sample) through the API,
   printing progress from HadaKron's history route;
4. load the trained LoKr and sample with and without it, convert it to ComfyUI's key format, merge
   it with another adapter, convert a Z-Image LoKr for ComfyUI's fused attention;
5. print a summary and stop the server.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from demo import assets
from demo.examples import EXAMPLES, node_ids
from demo.server import comfy_server
from demo.workflows import build_ui_workflow, ui_to_api, with_standin_text

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "demo-out" / "comfy"
TRAINED = "hadakron_demo_lokr"
TEXT_DIM = 4096


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def example_prompt(name: str, info: dict, overrides: dict[str, dict]) -> tuple[dict, dict]:
    """The shipped example as an API prompt on the demo files (overrides keyed by spec node key)."""
    spec = EXAMPLES[name]()
    ids = node_ids(spec)
    workflow = json.loads((REPO / "example_workflows" / f"{name}.json").read_text("utf-8"))
    if len(workflow["nodes"]) != len(spec):  # regenerate if the committed file predates the spec
        workflow = build_ui_workflow(spec, info)
    prompt = ui_to_api(workflow, info, {ids[k]: v for k, v in overrides.items()})
    return with_standin_text(prompt, TEXT_DIM), ids


SAMPLING = {
    "latent": {"width": 64, "height": 64, "length": 1},
    "sampler": {"steps": 4, "cfg": 1.0, "seed": 7},
    "vae": {"vae_name": assets.DEMO_VAE},
    "save": {"filename_prefix": "hadakron_demo/sample"},
}


def train(server, info: dict, steps: int = 60) -> tuple[dict, list]:
    overrides = {
        "unet": {"unet_name": assets.DEMO_UNET},
        "vae_for_data": {"vae_name": assets.DEMO_VAE},
        "dataset": {"folder": assets.DEMO_DATASET, "width": 64, "height": 64},
        "train": {
            "steps": steps,
            "learning_rate": 0.003,
            "network_dim": 8,
            "network_alpha": 8.0,
            "output_name": TRAINED,
            "overwrite": True,
            "seed": 1,
            "timestep_sampling": "uniform",
            "sample_every_n_steps": max(1, steps // 2),  # preview samples (decoded by the example's VAE)
        },
        **SAMPLING,
    }
    prompt, ids = example_prompt("train_lokr_from_folder", info, overrides)
    prompt_id = server.post_prompt(prompt)
    history = _follow_training(server, prompt_id, ids["train"])
    entry = server.wait_history(prompt_id, timeout=900)
    _raise_on_error(entry, server)
    return entry, history


def _follow_training(server, prompt_id: str, train_id: str) -> list:
    seen, history, deadline = 0, [], time.time() + 900
    while time.time() < deadline:
        history = server.get_json(f"/hadakron/train/history?node={train_id}").get("history", [])
        for point in history[seen:]:
            if point["step"] % 10 == 0 or point["step"] == point["total"]:
                say(f"  step {point['step']:>3}/{point['total']}  loss {point['loss']:.4f}  lr {point['lr']:.2e}")
        seen = len(history)
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(1.0)
    return history


def _raise_on_error(entry: dict, server) -> None:
    if entry.get("status", {}).get("status_str") != "success":
        messages = json.dumps(entry.get("status", {}).get("messages", []))[-2000:]
        raise SystemExit(f"demo workflow failed: {messages}\n{server.log_tail(40)}")


def sample_with(server, info: dict, strength: float) -> dict:
    overrides = {
        "unet": {"unet_name": assets.DEMO_UNET},
        "adapter": {"adapter_name": f"{TRAINED}.safetensors", "strength_model": strength},
        **SAMPLING,
    }
    prompt, ids = example_prompt("load_lokr_wan", info, overrides)
    prompt["stats"] = {"class_type": "HadaKronTestLatentStats", "inputs": {"samples": [ids["sampler"], 0]}}
    entry = server.run_prompt(prompt, timeout=300)
    return json.loads(entry["outputs"]["stats"]["text"][0])


def ui_text(entry: dict, node_id: str) -> str:
    return "\n".join(entry.get("outputs", {}).get(node_id, {}).get("text", []))


def run_file_example(server, info: dict, name: str, overrides: dict) -> str:
    prompt, ids = example_prompt(name, info, overrides)
    entry = server.run_prompt(prompt, timeout=300)
    return "\n".join(ui_text(entry, node_id) for node_id in ids.values())


def convert_trained(server) -> str:
    prompt = {
        "1": {
            "class_type": "HadaKronConvertFormat",
            "inputs": {
                "adapter_name": f"{TRAINED}.safetensors",
                "target": "comfy",
                "diffusers_prefix": "diffusion_model",
                "family": "auto",
                "output_name": f"{TRAINED}_comfy.safetensors",
                "overwrite": True,
            },
        }
    }
    return ui_text(server.run_prompt(prompt, timeout=300), "1")


def run_demo(base: Path = BASE, steps: int = 60) -> dict:
    """Run every example workflow on the embedded default under ``base``; returns what was measured."""
    started = time.time()
    say("[demo] generating the embedded default (tiny WAN 2.1 model + VAE, dataset, adapters)")
    assets.prepare(base)
    with comfy_server(base, test_nodes=True) as server:
        say(
            f"[demo] ComfyUI {server.get_json('/system_stats')['system']['comfyui_version']} with HadaKron at "
            f"{server.url}"
        )
        info = server.object_info()
        say("[demo] training a LoKr from the dataset folder (example workflow train_lokr_from_folder)")
        _, history = train(server, info, steps)
        say("[demo] sampling with the trained LoKr at strength 0 and 1 (example workflow load_lokr_wan)")
        without, with_lokr = sample_with(server, info, 0.0), sample_with(server, info, 1.0)
        say("[demo] converting the trained LoKr to ComfyUI's native key format")
        converted = convert_trained(server)
        say("[demo] merging it with another adapter into one LoRA (example workflow merge_two_adapters)")
        merged = run_file_example(
            server,
            info,
            "merge_two_adapters",
            {
                "combine": {
                    "adapter_1": f"{TRAINED}.safetensors",
                    "adapter_2": assets.DEMO_LOHA,
                    "rank": 8,
                    "output_name": "hadakron_demo_merged",
                }
            },
        )
        say("[demo] converting a Z-Image LoKr for ComfyUI (example workflow zimage_lokr_to_comfy)")
        zimage = run_file_example(
            server, info, "zimage_lokr_to_comfy", {"convert": {"adapter_name": assets.DEMO_ZIMAGE, "overwrite": True}}
        )
    result = {
        "history": history,
        "without": without,
        "with": with_lokr,
        "converted": converted,
        "merged": merged,
        "zimage": zimage,
        "seconds": time.time() - started,
        "base": base,
    }
    _summary(**result)
    return result


def main() -> None:
    run_demo()


def _summary(history, without, converted="", merged="", zimage="", seconds=0.0, base=BASE, **named) -> None:
    with_lokr = named["with"]
    losses = [p["loss"] for p in history]
    first, last = (sum(losses[:5]) / max(len(losses[:5]), 1), sum(losses[-5:]) / max(len(losses[-5:]), 1))
    loras = base / "models" / "loras"
    say("\n========== HadaKron demo summary ==========")
    say(f"training: {len(losses)} steps, loss (mean of 5) {first:.4f} -> {last:.4f}")
    say(
        f"sampled latent mean: without LoKr {without['mean']:.5f}, with LoKr {with_lokr['mean']:.5f} "
        f"(std {without['std']:.4f} -> {with_lokr['std']:.4f})"
    )
    say("files written:")
    for path in sorted(loras.rglob("hadakron_demo*")):
        say(f"  {path} ({path.stat().st_size / 1024:.1f} KiB)")
    for title, text in (("convert", converted), ("merge", merged), ("zimage", zimage)):
        say(f"--- {title} ---\n" + "\n".join(text.splitlines()[:12]))
    say(f"done in {seconds:.0f} s; start a UI with: bash scripts/serve.sh")


if __name__ == "__main__":
    main()
