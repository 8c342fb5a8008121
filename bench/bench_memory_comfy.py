"""Peak memory inside ComfyUI: loading an adapter and training, HadaKron against ComfyUI's native nodes.

Each measurement runs in its own child process (``ru_maxrss`` is per process). A child imports
ComfyUI, builds the same WAN-like model, records its resident size, then does one thing:

* ``load-hadakron`` / ``load-comfy``: apply a 1,000-module LoKr/LoHa/LoRA file (HadaKron's loader vs
  ``load_lora_for_models``) and bake the patches into the weights (``patch_model``);
* ``train-hadakron`` / ``train-comfy``: a few LoKr training steps (HadaKronTrainAdapter vs
  TrainLoraNode, fp32, no checkpointing on either side).

The figure is the peak resident memory above that starting point.

    .venv/bin/python -m bench.bench_memory_comfy [--blocks 40] [--dim 512] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .harness import Bench, Timing

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _lists(values: dict) -> dict:
    return {k: [v] for k, v in values.items()}  # is_input_list nodes get every input as a list


def _load(side: str, model, adapter: Path) -> None:
    if side == "hadakron":
        from hadakron.nodes.apply import ApplyRequest, apply_adapter

        patched = apply_adapter(model, None, ApplyRequest(path=str(adapter)))[0]
    else:
        import comfy.sd  # noqa: TID251 (the native reference side)
        import comfy.utils  # noqa: TID251

        state = comfy.utils.load_torch_file(str(adapter), safe_load=True)
        patched = comfy.sd.load_lora_for_models(model, None, state, 1.0, 0)[0]
        del state
    patched.patch_model()
    patched.unpatch_model()


def _train(side: str, runtime, model, steps: int, rank: int) -> None:
    gen = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 16, 1, 32, 32, generator=gen)} for _ in range(2)]
    positive = [[[torch.randn(1, 16, 64, generator=gen), {}]] for _ in range(2)]
    if side == "hadakron":
        values = dict(steps=steps, algo="lokr", network_dim=rank, output_name="bench/memory", overwrite=True)
        node = runtime.node_class("HadaKronTrainAdapter")
    else:
        values = dict(batch_size=1, grad_accumulation_steps=1, steps=steps, learning_rate=1e-4, rank=rank)
        values.update(optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32")
        values.update(algorithm="LoKr", gradient_checkpointing=False, existing_lora="[None]")
        node = runtime.node_class("TrainLoraNode")
    with torch.inference_mode():
        node.execute(model=[model], latents=latents, positive=positive, **_lists(values))


def run_child(task: str, side: str, args) -> dict:
    """Child process body: build the model, then load or train; peak RSS above the built model."""
    from .bench_patch import load_comfyui, wan_like_model, write_adapter
    from .bench_train import wan_like

    runtime = load_comfyui(Path(tempfile.mkdtemp(prefix="hk_mem_")))
    if task == "write":
        write_adapter(wan_like_model(args.blocks, args.dim), _modules(args), Path(args.adapter))
        return {}
    model = wan_like_model(args.blocks, args.dim) if task == "load" else wan_like(args.dim, 2)
    with torch.no_grad():
        for parameter in model.model.parameters():
            parameter.fill_(0.01)  # touch every page, so the starting point holds the whole model
    start = _rss_mb()
    if task == "load":
        _load(side, model, Path(args.adapter))
    else:
        _train(side, runtime, model, args.steps, 16)
    return {"start_mb": start, "extra_mb": _rss_mb() - start}


def _modules(args) -> int:
    """Adapter modules: ten linears per block, at most 1,000."""
    return min(1000, 10 * args.blocks)


def _child(task: str, side: str, args, adapter: Path) -> dict:
    command = [sys.executable, "-m", "bench.bench_memory_comfy", "--child", task, "--side", side]
    command += ["--blocks", str(args.blocks), "--dim", str(args.dim), "--steps", str(args.steps)]
    proc = subprocess.run([*command, "--adapter", str(adapter)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {task} {side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(bench: Bench, name: str, ours: dict, native: dict, what: str) -> None:
    mine, theirs = Timing(f"hadakron {what} (MiB)", [ours["extra_mb"]]), Timing(f"comfy {what}", [native["extra_mb"]])
    bench.ratio(name, mine, theirs)
    bench.notes.append(
        f"{name}: extra over the built model, hadakron {ours['extra_mb']:.0f} MiB, ComfyUI "
        f"{native['extra_mb']:.0f} MiB (processes started at {ours['start_mb']:.0f} / {native['start_mb']:.0f} MiB; "
        "values are MiB, not seconds)"
    )


def main(argv: list[str] | None = None) -> list[Bench]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100, help="blocks of the WAN-like model for loading")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", choices=("write", "load", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--side", default="hadakron", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.side, args)))
        return []
    bench = Bench("Peak memory in ComfyUI: loading and training vs native")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter.safetensors"
        _child("write", "-", args, adapter)
        loads = {side: _child("load", side, args, adapter) for side in ("hadakron", "comfy")}
        trains = {side: _child("train", side, args, adapter) for side in ("hadakron", "comfy")}
    blocks = f"WAN-like {args.blocks} blocks, dim {args.dim}"
    _ratio(bench, f"peak extra RSS, load + bake a {_modules(args)}-module adapter ({blocks})", *loads.values(), "load")
    trained = f"peak extra RSS, {args.steps} LoKr training steps (dim {args.dim}, 2 blocks)"
    _ratio(bench, trained, *trains.values(), "train")
    print(bench.markdown())
    return [bench]


if __name__ == "__main__":
    main()
