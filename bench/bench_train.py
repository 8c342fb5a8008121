"""Benchmark: HadaKron training against ComfyUI's native trainer and against materialising kron(w1, w2).

1. **Trainer steps/s** — ``HadaKronTrainAdapter`` vs core ``TrainLoraNode`` on the same WAN-like
   ComfyUI model (in-process, CPU; default width 1536 = WAN 2.1 1.3B, 2 blocks), same
   latents/conditioning, algorithm LoKr, batch 1, fp32, same step count, against the native node
   both without and with its default gradient checkpointing (target: >= 2x steps/s). ``run_all``
   also runs a narrow model (width 512), where the frozen model's own compute dominates both sides.
2. **One adapted layer** (5120², 3840²; factor −1, rank 16; 1024 and 4096 tokens): forward+backward
   of the frozen layer, of the layer with our bypass adapter (LoKr Kronecker identity, LoHa exact
   low-rank form) and with the adapter's ΔW materialised every step as musubi-tuner and the native
   trainer do (``kron(w1, w2a·w2b)`` / ``(w1a·w1b)⊙(w2a·w2b)``, then an extra GEMM).
   * adapter cost = adapted − frozen; ours vs materialised (target: >= 5x lower);
   * overhead = adapted / frozen − 1 at 4096 tokens (targets: LoKr <= 15 %, LoHa <= 30 %);
   * memory: bytes saved for backward (all devices) and CUDA peak allocation when on a GPU.

    .venv/bin/python -m bench.bench_train [--steps 6] [--dim 1536 --blocks 2] [--device cpu]
        [--sizes 5120 3840] [--tokens 1024 4096] [--skip-trainer] [--skip-layers]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from hadakron.training.modules import TrainLoHa, TrainLoKr

from .bench_patch import load_comfyui
from .harness import Bench, machine_markdown


# --- 1. whole trainer vs ComfyUI's TrainLoraNode -----------------------------------------------
def wan_like(dim: int, blocks: int):
    """A WAN 2.1 T2V ComfyUI model with deterministic weights (``dim`` wide, ``blocks`` deep)."""
    from comfy.model_patcher import ModelPatcher  # noqa: TID251 (the native reference side)

    from demo import tiny

    cfg = {**tiny.tiny_config("wan21")[1], "dim": dim, "ffn_dim": 2 * dim, "num_heads": max(1, dim // 128)}
    cfg["num_layers"] = blocks
    cpu = torch.device("cpu")
    return ModelPatcher(tiny._build_model("WAN21_T2V", cfg, 0), load_device=cpu, offload_device=cpu)


def _lists(values: dict) -> dict:
    return {k: [v] for k, v in values.items()}  # is_input_list nodes get every input as a list


def trainer_bench(bench: Bench, runtime, args) -> None:
    gen = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 16, 1, args.latent, args.latent, generator=gen)} for _ in range(2)]
    positive = [[[torch.randn(1, 16, 64, generator=gen), {}]] for _ in range(2)]
    ours_node = runtime.node_class("HadaKronTrainAdapter")
    native_node = runtime.node_class("TrainLoraNode")

    def ours(steps: int):
        values = dict(steps=steps, algo="lokr", network_dim=args.rank, output_name="bench/ours", overwrite=True)
        with torch.inference_mode():
            ours_node.execute(model=[model_a], latents=latents, positive=positive, **_lists(values))

    def native(steps: int, checkpointing: bool = False):
        values = dict(batch_size=1, grad_accumulation_steps=1, steps=steps, learning_rate=1e-4, rank=args.rank)
        values.update(optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32")
        values.update(algorithm="LoKr", gradient_checkpointing=checkpointing, existing_lora="[None]")
        with torch.inference_mode():
            native_node.execute(model=[model_b], latents=latents, positive=positive, **_lists(values))

    model_a, model_b = wan_like(args.dim, args.blocks), wan_like(args.dim, args.blocks)
    t_ours, t_native, t_ckpt = bench.time_interleaved(
        {
            f"HadaKronTrainAdapter, {args.steps} steps": lambda: ours(args.steps),
            f"TrainLoraNode, {args.steps} steps": lambda: native(args.steps),
            "TrainLoraNode, checkpointing": lambda: native(args.steps, True),
        },
        repeat=args.repeat,
    ).values()
    name = f"WAN-like dim {args.dim} x{args.blocks} blocks, {(args.latent // 2) ** 2} tokens, LoKr"
    bench.ratio(f"steps/s vs native, both without checkpointing ({name})", t_ours, t_native, 2.0, True)
    bench.ratio(f"steps/s vs native with its default checkpointing ({name})", t_ours, t_ckpt, 2.0, True)


# --- 2. one adapted layer ---------------------------------------------------------------------
def _adapter(algo: str, size: int, rank: int, device) -> torch.nn.Module:
    cls = TrainLoKr if algo == "lokr" else TrainLoHa
    module = cls(size, size, (), rank, float(rank)).to(device)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).to(device) * 0.02)
    return module.train()


def _materialised(adapter) -> torch.Tensor:
    p = dict(adapter.named_parameters())
    if adapter.algo == "lokr":
        w2 = p["w2"] if "w2" in p else p["w2a"] @ p["w2b"]
        return torch.kron(p["w1"], w2) * adapter.scale()
    return (p["w1a"] @ p["w1b"]) * (p["w2a"] @ p["w2b"]) * adapter.scale()


def _step(kind: str, x: torch.Tensor, weight: torch.Tensor, adapter) -> None:
    x = x.detach().requires_grad_(True)
    y = F.linear(x, weight)
    if kind == "ours":
        y = adapter.add_to(y, x)
    elif kind == "materialised":
        y = y + F.linear(x, _materialised(adapter))
    y.backward(torch.ones_like(y))
    if adapter is not None:
        adapter.zero_grad(set_to_none=True)


def _saved_bytes(kind: str, x, weight, adapter) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(kind, x, weight, adapter)
    return total[0]


def _cuda_peak(kind, x, weight, adapter) -> float | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(kind, x, weight, adapter)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def layer_bench(bench: Bench, size: int, tokens: int, algo: str, args) -> None:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    weight = torch.randn(size, size, device=device, dtype=dtype) / math.sqrt(size)
    x = torch.randn(tokens, size, device=device, dtype=dtype)
    adapter = _adapter(algo, size, args.rank, device)
    label = f"{algo} {size}² x {tokens} tok"
    kinds = ("frozen", "ours", "materialised")
    for kind in kinds:  # the memory pass doubles as the warm-up round of the timings
        saved = _saved_bytes(kind, x, weight, adapter) / 2**20
        peak = _cuda_peak(kind, x, weight, adapter)
        extra = f", CUDA peak {peak:.1f} MiB" if peak is not None else ""
        bench.notes.append(f"{label} {kind}: saved for backward {saved:.1f} MiB{extra}")
    steps = {f"{label} {kind}": (lambda kind=kind: _step(kind, x, weight, adapter)) for kind in kinds}
    frozen, ours, materialised = bench.time_interleaved(steps, repeat=args.layer_repeat, warmup=0).values()
    cost_ours = _Diff(f"{label} ours - frozen", ours, frozen)
    cost_mat = _Diff(f"{label} materialised - frozen", materialised, frozen)
    bench.ratio(f"{label}: adapter cost ours / materialised", cost_ours, cost_mat, 0.2)
    if tokens == max(args.tokens):
        target = 1.15 if algo == "lokr" else 1.30
        bench.ratio(f"{label}: adapted / frozen layer", ours, frozen, target)


class _Diff:
    """A timing difference (medians of two timings) that the ratio table can divide."""

    def __init__(self, label, a, b):
        self.label = label
        self.runs = [max(1e-9, a.median - b.median)]
        self.median = self.low = self.high = self.runs[0]


def main(argv: list[str] | None = None) -> None:
    """Run both parts and print the markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dim", type=int, default=1536, help="model width (1536 = WAN 2.1 1.3B)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--latent", type=int, default=32, help="latent height/width (tokens = (n/2)^2)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5120, 3840])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--layer-repeat", type=int, default=5)
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args(argv)

    print(machine_markdown(), "\n")
    if not args.skip_trainer:
        bench = Bench("Trainer steps/s vs ComfyUI TrainLoraNode (CPU, fp32)")
        trainer_bench(bench, load_comfyui(Path(tempfile.mkdtemp(prefix="hk_bench_"))), args)
        print(bench.markdown(), "\n")
    if args.skip_layers:
        return
    layers = Bench(f"One adapted layer, factor -1, rank {args.rank}, {args.device}")
    for size in args.sizes:
        for tokens in args.tokens:
            for algo in ("lokr", "loha"):
                layer_bench(layers, size, tokens, algo, args)
    print(layers.markdown())


if __name__ == "__main__":
    main()
