"""Benchmark: Z-Image QKV LoKr -> one fused LoRA, from the Kronecker factors vs a dense SVD, at equal error.

Z-Image-sized attention: three 3840×3840 LoKr (to_q/to_k/to_v) at factor -1 (w1 60×60 full, w2 64×64
at ranks 4, 8 and 16; stacked exact rank 60·(4+8+16) = 1680). The reference is what musubi's
converter does: ``torch.linalg.svd`` of the materialised stacked 11520×3840 ΔW (the SVD alone is
timed; building ΔW is not). Ours is HadaKron's conversion of the three modules
(:func:`hadakron.converters.qkv_math.fuse_to_lora`: factor SVDs, the Gram of the stacked downs from
small Kronecker products, one 1680×1680 eigendecomposition; no dense matrix). Both give the
Eckart–Young optimum, so the errors printed must agree; ratios are ours / dense (lower is better).

    .venv/bin/python -m bench.bench_convert [--repeat 3] [--dense-repeat 2] [--rank 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os

import torch

from hadakron.adapters import LoKrWeights, ModuleAdapter, lokr_shapes
from hadakron.converters.qkv_math import Part, fuse_to_lora

from .harness import Bench, machine_markdown

DIM = 3840
W2_RANKS = (4, 8, 16)
ENERGY = 0.9999


def make_parts(seed: int = 0) -> list[Part]:
    """q/k/v LoKr at factor -1 with low-rank w2 (alpha = rank, so γ = 1 as musubi writes them)."""
    gen = torch.Generator().manual_seed(seed)
    (out_l, in_m), (out_k, in_n) = lokr_shapes(DIM, DIM, -1)
    parts = []
    for index, rank in enumerate(W2_RANKS):
        weights = LoKrWeights(
            w1=torch.randn(out_l, in_m, generator=gen) * 0.05,
            w2a=torch.randn(out_k, rank, generator=gen) * 0.05,
            w2b=torch.randn(rank, in_n, generator=gen) * 0.05,
        )
        adapter = ModuleAdapter(f"lora_unet_layers_0_attention_to_{'qkv'[index]}", weights, alpha=float(rank))
        parts.append(Part(adapter, gamma=1.0, alpha=torch.tensor(float(rank))))
    return parts


def stacked_delta(parts: list[Part]) -> torch.Tensor:
    """The dense (3·3840)×3840 fp32 ΔW musubi materialises."""
    return torch.cat([p.gamma * p.adapter.delta((DIM, DIM)) for p in parts], dim=0)


def dense_rank(s: torch.Tensor, rank: int | None) -> int:
    """musubi's rule on the dense singular values: ``min(N, len(S))`` or the 99.99 % energy rule."""
    if rank is not None:
        return min(rank, s.numel())
    cum = (s.double() ** 2).cumsum(0)
    return int((cum < ENERGY * float(cum[-1])).sum()) + 1


def rel_error(delta: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    """‖ΔW − up·down‖_F / ‖ΔW‖_F in fp64."""
    d = delta.double()
    return float((d - up.double() @ down.double()).norm() / d.norm())


def main(argv: list[str] | None = None) -> None:
    """Run both settings (``--rank`` and the energy rule) and print the ratio table and the errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dense-repeat", type=int, default=2)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/LAPACK threads for both sides (default 1: on a shared machine multithreaded LAPACK timings "
        "swing by 10x; 0 keeps the libraries' defaults)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        # SciPy's OpenBLAS reads this when first imported (lazily, inside the converter); torch's pool directly.
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)

    parts = make_parts()
    delta = stacked_delta(parts)
    bench = Bench("Z-Image QKV LoKr -> LoRA (3 × 3840², factor -1, w2 ranks 4/8/16)")
    box: dict = {}

    def dense():
        box["svd"] = torch.linalg.svd(delta, full_matrices=False)

    reference = bench.time(
        "dense torch.linalg.svd of the stacked 11520×3840 ΔW", dense, repeat=args.dense_repeat, warmup=0
    )
    _, s, _ = box["svd"]
    for label, rank, energy in ((f"--lokr_rank {args.rank}", args.rank, None), ("energy 99.99 %", None, ENERGY)):

        def ours(rank=rank, energy=energy):
            box["ours"] = fuse_to_lora(parts, DIM, DIM, rank, energy)

        timing = bench.time(f"hadakron {label}", ours, repeat=args.repeat)
        target = 0.1 if rank is not None else None
        bench.ratio(f"QKV LoKr -> LoRA, {label}", timing, reference, target=target)
        tensors, result, exact = box["ours"]
        k = dense_rank(s, rank)
        u, sv, vh = box["svd"]
        root = sv[:k].sqrt()
        dense_err = rel_error(delta, u[:, :k] * root, root[:, None] * vh[:k])
        ours_err = rel_error(delta, tensors[".lora_up.weight"], tensors[".lora_down.weight"])
        bench.notes.append(
            f"{label}: rank ours {result.rank} / dense {k} (exact rank {exact}); relative error ours {ours_err:.6g} "
            f"(reported {result.rel_error:.6g}), dense {dense_err:.6g}; kept energy {result.kept_energy:.6f}"
        )
    print(machine_markdown())
    print()
    print(bench.markdown())


if __name__ == "__main__":
    main()
