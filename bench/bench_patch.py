"""Benchmark: HadaKron's load and patch paths against ComfyUI's native ones, measured in the same run.

(a) resolve + patch a 1,000-module LoKr/LoHa/LoRA adapter on a WAN-like ComfyUI model: HadaKron's
    loader path (``nodes.apply.apply_adapter``: read, parse, resolve, plan, lazy patches) against
    ``comfy.utils.load_torch_file`` + ``comfy.sd.load_lora_for_models`` on the same file (target <= 1.0);
(b) applying LoKr and LoHa (factor -1, rank 16) to WAN-14B-sized layers (5120x5120, 13824x5120):
    ``adapters.apply_to_weight`` (in-place broadcast / row chunks, no ΔW) against ComfyUI's
    ``comfy.lora.calculate_weight`` with its ``LoKrAdapter``/``LoHaAdapter`` (target <= 0.7), and against
    a plain in-place add of a precomputed ΔW, the memory-bandwidth floor of baking (target <= 1.5).

    .venv/bin/python -m bench.bench_patch [--modules 1000] [--dim 256] [--device cpu] [--repeat 5]

ComfyUI 0.3.75 (``.comfyui/``, scripts/setup.sh) is loaded on CPU through tests/comfy_runtime.py;
layer benchmarks may still run on ``--device cuda``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from hadakron.adapters import LoHaWeights, LoKrWeights, ModuleAdapter, apply_to_weight, lokr_shapes, module_scale
from hadakron.common.atomic import atomic_write_bytes

from .harness import Bench, machine_markdown

REPO = Path(__file__).resolve().parents[1]
LAYER_SHAPES = ((5120, 5120), (13824, 5120))
WAN_LINEARS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)


def load_comfyui(base: Path):
    """Import ComfyUI (CPU args, HadaKron installed as a custom node) the way the tests do."""
    from demo import runtime as comfy_runtime

    if not comfy_runtime.comfy_available():
        raise SystemExit(f"ComfyUI runtime missing at {comfy_runtime.COMFY_DIR}: run `bash scripts/setup.sh`")
    return comfy_runtime.load_comfy(base, test_nodes=False)


def wan_like_model(blocks: int, dim: int):
    """A real ComfyUI WAN 2.1 model with ``blocks`` blocks of width ``dim`` (uninitialised weights)."""
    import comfy.model_patcher  # noqa: TID251 (the native reference side)
    import comfy.supported_models  # noqa: TID251

    from demo.tiny import tiny_config

    _, tiny = tiny_config("wan21")
    cfg = {**tiny, "dim": dim, "ffn_dim": 2 * dim, "num_heads": max(1, dim // 128), "num_layers": blocks}
    config = comfy.supported_models.WAN21_T2V(cfg)
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(config.get_model({}), load_device=cpu, offload_device=cpu)


def module_tensors(algo: str, out: int, inp: int, rank: int, gen) -> dict[str, torch.Tensor]:
    """Role suffix -> tensor for one Linear module (kohya/LyCORIS spelling)."""

    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.05

    if algo == "lora":
        return {".lora_up.weight": r(out, rank), ".lora_down.weight": r(rank, inp), ".alpha": torch.tensor(8.0)}
    if algo == "loha":
        return {
            ".hada_w1_a": r(out, rank),
            ".hada_w1_b": r(rank, inp),
            ".hada_w2_a": r(out, rank),
            ".hada_w2_b": r(rank, inp),
            ".alpha": torch.tensor(8.0),
        }
    (out_l, in_m), (out_k, in_n) = lokr_shapes(out, inp, -1)
    rank = min(rank, out_k, in_n)
    return {
        ".lokr_w1": r(out_l, in_m),
        ".lokr_w2_a": r(out_k, rank),
        ".lokr_w2_b": r(rank, in_n),
        ".alpha": torch.tensor(8.0),
    }


def write_adapter(model_patcher, modules: int, path: Path, rank: int = 16) -> Path:
    """``modules`` sd-scripts-named modules cycling LoKr, LoHa, LoRA over the model's block linears."""
    shapes = {k: tuple(v.shape) for k, v in model_patcher.model.diffusion_model.state_dict().items()}
    gen, tensors, count, block = torch.Generator().manual_seed(0), {}, 0, 0
    while count < modules:
        for linear in WAN_LINEARS[: modules - count]:
            out, inp = shapes[f"blocks.{block}.{linear}.weight"]
            name = f"lora_unet_blocks_{block}_{linear.replace('.', '_')}"
            algo = ("lokr", "loha", "lora")[count % 3]
            tensors.update({name + k: v for k, v in module_tensors(algo, out, inp, rank, gen).items()})
            count += 1
        block += 1
    save_file(tensors, str(path))
    return path


def bench_load(bench: Bench, modules: int, dim: int, repeat: int) -> None:
    """(a): HadaKron's loader path against ``load_lora_for_models`` on the same file."""
    import comfy.sd  # noqa: TID251 (the native reference side)
    import comfy.utils  # noqa: TID251

    from hadakron.nodes.apply import ApplyRequest, apply_adapter

    blocks = -(-modules // len(WAN_LINEARS))
    model = wan_like_model(blocks, dim)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_adapter(model, modules, Path(tmp) / "adapter.safetensors")
        request = ApplyRequest(path=str(path))
        counts = {}

        def ours():
            counts["hadakron"] = len(apply_adapter(model, None, request)[0].patches)

        def native():
            sd = comfy.utils.load_torch_file(str(path), safe_load=True)
            counts["comfy"] = len(comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0)[0].patches)

        with torch.inference_mode():
            timings = bench.time_interleaved(
                {f"hadakron load {modules} modules": ours, f"comfy load_lora_for_models {modules} modules": native},
                repeat=repeat,
            )
        mine, ref = timings.values()
    bench.ratio(f"resolve+patch {modules}-module adapter (WAN-like, {blocks} blocks, dim {dim})", mine, ref, 1.0)
    bench.notes.append(f"patched weights: hadakron {counts['hadakron']}, comfy native {counts['comfy']}")


def layer_adapter(algo: str, shape: tuple[int, int], device: str, rank: int = 16, seed: int = 0):
    """``(HadaKron ModuleAdapter, {key: tensor} for ComfyUI's adapter)`` for one layer."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {"m" + k: v.to(device) for k, v in module_tensors(algo, *shape, rank, gen).items()}
    if algo == "lokr":
        weights = LoKrWeights(w1=tensors["m.lokr_w1"], w2a=tensors["m.lokr_w2_a"], w2b=tensors["m.lokr_w2_b"])
    else:
        weights = LoHaWeights(
            tensors["m.hada_w1_a"], tensors["m.hada_w1_b"], tensors["m.hada_w2_a"], tensors["m.hada_w2_b"]
        )
    return ModuleAdapter("m", weights, alpha=float(tensors["m.alpha"])), tensors


def comfy_adapter(algo: str, tensors: dict):
    from comfy.weight_adapter import LoHaAdapter, LoKrAdapter  # noqa: TID251 (the native reference side)

    cls = LoKrAdapter if algo == "lokr" else LoHaAdapter
    return cls.load("m", tensors, float(tensors["m.alpha"]), None)


def bench_layers(bench: Bench, device: str, repeat: int) -> None:
    """(b): in-place LoKr/LoHa patches on 14B-sized layers against ComfyUI and the bandwidth floor."""
    for shape in LAYER_SHAPES:
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
        for algo in ("lokr", "loha"):
            bench_layer(bench, algo, weight, device, repeat)


def bench_layer(bench: Bench, algo: str, weight: torch.Tensor, device: str, repeat: int) -> None:
    """One algorithm on one layer: ours, ComfyUI's ``calculate_weight``, and ``weight += ΔW`` precomputed."""
    label = f"{algo} {weight.shape[0]}x{weight.shape[1]} {device}"
    mine, ref, floor = time_patch_three_ways(bench, algo, weight, label, repeat, check=True)
    bench.ratio(f"{label}: vs ComfyUI calculate_weight", mine, ref, 0.7)
    bench.ratio(f"{label}: vs in-place add of precomputed ΔW", mine, floor, 1.5)


def time_patch_three_ways(
    bench: Bench, algo: str, weight: torch.Tensor, label: str, repeat: int, rank: int = 16, check: bool = False
):
    """Time, round-robin, HadaKron's in-place patch, ComfyUI's ``calculate_weight`` and ``weight += ΔW``
    (ΔW precomputed) for one random ``algo`` adapter on ``weight``; ``(ours, comfy, floor)`` timings."""
    import comfy.lora  # noqa: TID251 (the native reference side)

    shape, device = tuple(weight.shape), str(weight.device)
    ours, tensors = layer_adapter(algo, shape, device, rank=rank)
    scale = module_scale(ours)
    patches = [(1.0, comfy_adapter(algo, tensors), 1.0, None, None)]
    if check:
        _check_agreement(bench, algo, shape, weight, ours, scale, patches)
    delta = ours.delta(shape, device=weight.device) * scale
    with torch.inference_mode():
        timings = bench.time_interleaved(
            {
                f"hadakron {label}": lambda: apply_to_weight(ours, weight, 1.0, scale),
                f"comfy {label}": lambda: comfy.lora.calculate_weight(patches, weight, "m"),
                f"add precomputed ΔW {label}": lambda: weight.add_(delta),
            },
            repeat,
        )
    return tuple(timings.values())


def _check_agreement(bench: Bench, algo, shape, weight, ours, scale, patches) -> None:
    import comfy.lora  # noqa: TID251 (the native reference side)

    a, b = weight.clone(), weight.clone()
    with torch.inference_mode():
        apply_to_weight(ours, a, 1.0, scale)
        b = comfy.lora.calculate_weight(patches, b, "m")
    rel = float((a - b).norm() / (b - weight).norm())
    bench.notes.append(f"{algo} {shape}: relative difference of the applied ΔW vs ComfyUI {rel:.2e}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256, help="width of the WAN-like model for (a)")
    parser.add_argument("--device", default="cpu", help="device for (b)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--json", help="also write the results as JSON to this file (overwritten)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as base:
        load_comfyui(Path(base))
        bench = Bench("Patch: HadaKron vs ComfyUI native")
        if not args.skip_load:
            bench_load(bench, args.modules, args.dim, args.repeat)
        if not args.skip_layers:
            bench_layers(bench, args.device, args.repeat)
    print(machine_markdown() + "\n\n" + bench.markdown())
    if args.json:
        atomic_write_bytes(args.json, bench.to_json().encode("utf-8"), overwrite=True)


if __name__ == "__main__":
    main()
