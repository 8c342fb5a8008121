"""Scaling curves: how patching and the bypass forward grow with layer size, rank, factor and tokens.

Every point is measured against the alternatives in the same run: ComfyUI's native
``calculate_weight`` (LoKrAdapter/LoHaAdapter), the bandwidth floor (in-place add of a precomputed
ΔW), a musubi-style materialised ΔW forward+backward, and LyCORIS 4.1.3's functional bypass.

    .venv/bin/python -m bench.bench_scaling [--quick] [--out bench/out]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from hadakron.adapters import ModuleAdapter, bypass_forward

from .bench_patch import layer_adapter, load_comfyui, time_patch_three_ways
from .harness import Bench
from .plots import line_plot

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")


def _patch_points(bench: Bench, algo: str, shape, rank: int, repeat: int, factor_note: str = "") -> dict:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    label = f"{algo} {shape[0]}x{shape[1]} r{rank}{factor_note}"
    mine, native, floor = time_patch_three_ways(bench, algo, weight, label, repeat, rank=rank)
    bench.ratio(f"patch {label}: vs ComfyUI", mine, native)
    bench.ratio(f"patch {label}: vs floor", mine, floor)
    return {"hadakron": mine.median, "comfy native": native.median, "add precomputed ΔW": floor.median}


def size_curve(bench: Bench, sizes, repeat: int, out: Path) -> list[Path]:
    """Patch time vs square layer size (LoKr f=-1 and LoHa, rank 16)."""
    plots = []
    for algo in ("lokr", "loha"):
        series: dict[str, list] = {}
        for n in sizes:
            for name, value in _patch_points(bench, algo, (n, n), 16, repeat).items():
                series.setdefault(name, []).append((n, value))
        plots.append(
            line_plot(
                out / f"patch_size_{algo}.png",
                f"{algo.upper()} patch time vs layer size (rank 16)",
                "layer size n (n x n)",
                "seconds",
                series,
            )
        )
    return plots


def rank_curve(bench: Bench, ranks, repeat: int, out: Path, n: int = 3072) -> list[Path]:
    """Patch time vs rank at one layer size."""
    plots = []
    for algo in ("lokr", "loha"):
        series: dict[str, list] = {}
        for rank in ranks:
            for name, value in _patch_points(bench, algo, (n, n), rank, repeat).items():
                series.setdefault(name, []).append((rank, value))
        plots.append(
            line_plot(
                out / f"patch_rank_{algo}.png",
                f"{algo.upper()} patch time vs rank ({n}x{n})",
                "rank",
                "seconds",
                series,
            )
        )
    return plots


def _lokr_with_factor(n: int, factor: int, rank: int, gen) -> ModuleAdapter:
    from hadakron.adapters import init_lokr

    weights = init_lokr(n, n, rank, factor=factor, generator=gen)
    for name, value in vars(weights).items():
        if isinstance(value, torch.Tensor):
            setattr(weights, name, torch.randn(value.shape, generator=gen) * 0.05)
    return ModuleAdapter("m", weights, alpha=float(rank))


def factor_curve(bench: Bench, factors, repeat: int, out: Path, n: int = 4096, tokens: int = 1024) -> list[Path]:
    """LoKr bypass forward+backward vs factor (w2 becomes large and full for small factors)."""
    series: dict[str, list] = {}
    for factor in factors:
        adapter = _lokr_with_factor(n, factor, 16, torch.Generator().manual_seed(factor + 100))
        times = _bypass_times(bench, adapter, (n, n), tokens, repeat, f"lokr f={factor}", lycoris=False)
        for name, value in times.items():
            series.setdefault(name, []).append((factor if factor > 0 else 0, value))
    return [
        line_plot(
            out / "bypass_factor_lokr.png",
            f"LoKr fwd+bwd vs factor ({n}x{n}, {tokens} tokens; 0 = auto)",
            "factor",
            "seconds",
            series,
        )
    ]


def _trainable(adapter: ModuleAdapter) -> list[torch.Tensor]:
    params = [v for v in vars(adapter.weights).values() if isinstance(v, torch.Tensor)]
    for p in params:
        p.requires_grad_(True)
    return params


def _bypass_times(
    bench: Bench, adapter: ModuleAdapter, shape, tokens: int, repeat: int, label: str, lycoris: bool = True
) -> dict:
    params = _trainable(adapter)
    x = torch.randn(tokens, shape[1])
    frozen = torch.randn(shape) * 0.02

    def ours():
        y = F.linear(x, frozen) + bypass_forward(adapter, x, shape)
        y.square().mean().backward()

    def materialised():
        y = F.linear(x, frozen + adapter.weights.delta(shape))
        y.square().mean().backward()

    def frozen_only():
        F.linear(x, frozen).square().mean()

    mine, mat, frozen_time = bench.time_interleaved(
        {f"{label} bypass": ours, f"{label} materialised": materialised, f"{label} frozen": frozen_only}, repeat
    ).values()
    bench.ratio(f"{label}: layer fwd+bwd, bypass vs materialised ΔW", mine, mat)
    times = {"hadakron bypass": mine.median, "materialised ΔW": mat.median, "frozen layer": frozen_time.median}
    if lycoris:
        times["lycoris bypass"] = _lycoris_bypass_time(bench, adapter, x, frozen, repeat, label)
    for p in params:
        p.grad = None
    return {k: v for k, v in times.items() if v is not None}


def _lycoris_bypass_time(bench, adapter, x, frozen, repeat, label):
    w = adapter.weights
    try:
        from lycoris.functional import loha, lokr
    except ImportError:
        return None
    if w.algo == "lokr":

        def run():
            y = lokr.bypass_forward_diff(
                x, F.linear(x, frozen), w.w1, w.w1a, w.w1b, w.w2, w.w2a, w.w2b, w.t2, gamma=1.0, backend="torch"
            )
            y.square().mean().backward()
    else:

        def run():
            y = loha.bypass_forward_diff(
                x, F.linear(x, frozen), w.w1b, w.w1a, w.w2b, w.w2a, None, None, gamma=torch.tensor(1.0), backend="torch"
            )
            y.square().mean().backward()

    return bench.time(f"{label} lycoris", run, repeat).median


def token_curve(bench: Bench, token_counts, repeat: int, out: Path, n: int = 3072) -> list[Path]:
    """Adapter forward+backward vs token count (LoKr, LoHa) against materialising ΔW and LyCORIS."""
    plots = []
    for algo in ("lokr", "loha"):
        adapter, _ = layer_adapter(algo, (n, n), "cpu", rank=16)
        series: dict[str, list] = {}
        for tokens in token_counts:
            for name, value in _bypass_times(bench, adapter, (n, n), tokens, repeat, f"{algo} {tokens}t").items():
                series.setdefault(name, []).append((tokens, value))
        plots.append(
            line_plot(
                out / f"bypass_tokens_{algo}.png",
                f"{algo.upper()} fwd+bwd vs tokens ({n}x{n})",
                "tokens",
                "seconds",
                series,
            )
        )
    return plots


def flux2_layer(bench: Bench, repeat: int) -> None:
    """FLUX.2-dev linear1 (55296x6144) LoKr bake, one layer, against ComfyUI and the floor."""
    _patch_points(bench, "lokr", (55296, 6144), 16, max(1, repeat // 2), " (FLUX.2-dev linear1)")


def main(argv: list[str] | None = None) -> list[Bench]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--skip-flux2", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_comfyui(Path(tempfile.mkdtemp(prefix="hadakron-bench-")))
    repeat = 2 if args.quick else 3
    bench = Bench("Scaling curves (CPU)")
    plots = size_curve(bench, (1024, 2048, 3072, 5120) if args.quick else (1024, 2048, 3072, 4096, 5120), repeat, out)
    plots += rank_curve(bench, (4, 16, 64) if args.quick else (4, 8, 16, 32, 64), repeat, out)
    plots += factor_curve(bench, (-1, 8, 16) if args.quick else (-1, 4, 8, 16), repeat, out)
    plots += token_curve(bench, (256, 1024, 4096), repeat, out)
    if not args.skip_flux2:
        flux2_layer(bench, repeat)
    bench.notes += [f"plot: {p.as_posix()}" for p in plots]
    print(bench.markdown())
    return [bench]


if __name__ == "__main__":
    main()
