"""Benchmark: LoKr -> LoRA via the factors' SVDs against a dense SVD of the materialised ΔW, at equal error.

WAN-14B-sized layer (5120×5120), LoKr factor -1 (w1 64×64 full, w2 80×80 at rank 16, exact rank 1024),
target rank 64. Both paths give the Eckart–Young optimum, so the errors printed must be equal; the
ratio is ours / dense (lower is better).

    .venv/bin/python -m bench.bench_lowrank [--size 5120] [--w2-rank 16] [--rank 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import math

import torch

from hadakron.adapters import LoKrWeights, ModuleAdapter, lokr_shapes
from hadakron.merge.lowrank import exact_lowrank, lokr_truncate, truncate

from .harness import Bench, machine_markdown


def make_lokr(size: int, w2_rank: int, device: str, seed: int = 0) -> ModuleAdapter:
    """A random factor -1 LoKr on a ``size``×``size`` Linear layer with a low-rank w2."""
    gen = torch.Generator().manual_seed(seed)
    (out_l, in_m), (out_k, in_n) = lokr_shapes(size, size, -1)
    weights = LoKrWeights(
        w1=torch.randn(out_l, in_m, generator=gen),
        w2a=torch.randn(out_k, w2_rank, generator=gen),
        w2b=torch.randn(w2_rank, in_n, generator=gen),
    )
    return ModuleAdapter("bench_lokr", weights).to(device=device)


def dense_truncation(adapter: ModuleAdapter, shape: tuple, rank: int):
    """Reference: materialise ΔW, full dense SVD, keep the top ``rank`` triplets."""
    delta = adapter.delta(shape, device=adapter.weights.w1.device)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank], s


def rel_error(delta: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    """‖ΔW − up·down‖_F / ‖ΔW‖_F, measured densely in fp64."""
    d = delta.double()
    return float((d - up.double() @ down.double()).norm() / d.norm())


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the markdown table plus the errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--w2-rank", type=int, default=16)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dense-repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    shape = (args.size, args.size)
    adapter = make_lokr(args.size, args.w2_rank, args.device)
    bench = Bench(f"LoKr -> LoRA, {args.size}², factor -1, w2 rank {args.w2_rank}, target rank {args.rank}")
    box: dict = {}
    fast = bench.time(
        "lokr_truncate (factor SVDs)",
        lambda: box.__setitem__("fast", lokr_truncate(adapter, shape, rank=args.rank)),
        repeat=args.repeat,
    )
    generic = bench.time(
        "exact_lowrank + truncate (QR + core SVD)",
        lambda: box.__setitem__("generic", truncate(exact_lowrank(adapter, shape), rank=args.rank)),
        repeat=args.repeat,
    )
    dense = bench.time(
        "materialise ΔW + dense SVD",
        lambda: box.__setitem__("dense", dense_truncation(adapter, shape, args.rank)),
        repeat=args.dense_repeat,
        warmup=0,
    )
    bench.ratio("lokr_truncate / dense SVD", fast, dense)
    bench.ratio("exact_lowrank+truncate / dense SVD", generic, dense)

    delta = adapter.delta(shape, device=args.device)
    up_d, down_d, s = box["dense"]
    optimum = math.sqrt(float((s[args.rank :].double() ** 2).sum() / (s.double() ** 2).sum()))
    errors = {
        "dense SVD (measured)": rel_error(delta, up_d, down_d),
        "lokr_truncate (measured)": rel_error(delta, box["fast"].lowrank.up, box["fast"].lowrank.down),
        "lokr_truncate (reported)": box["fast"].rel_error,
        "generic truncate (measured)": rel_error(delta, box["generic"].lowrank.up, box["generic"].lowrank.down),
        "Eckart–Young optimum (dense σ)": optimum,
    }
    for name, value in errors.items():
        bench.notes.append(f"relative error, {name}: {value:.6e}")
    print(machine_markdown())
    print()
    print(bench.markdown())
    for r in bench.ratios:
        print(f"{r.name}: {r.value:.5f} (speed-up {1 / r.value:.1f}x)")


if __name__ == "__main__":
    main()
