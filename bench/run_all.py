"""One command for every benchmark: writes bench/results.md and PNG plots under bench/plots/.

    bash scripts/bench.sh            # = .venv/bin/python -m bench.run_all
    bash scripts/bench.sh --quick    # fewer points and repeats

Each benchmark runs in its own process (so peak-memory figures and thread pools do not mix) and
prints markdown tables of ratios measured in the same run; this script gathers them with the
machine description. With a CUDA device the layer benchmarks also run on it (bf16 in training).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from .harness import machine_markdown

REPO = Path(__file__).resolve().parents[1]
TARGETS_NOTE = (
    "Targets (from the issues): resolve+patch <= 1.0x ComfyUI; LoKr/LoHa patch <= 0.7x ComfyUI's calculate_weight; "
    "bake <= 1.5x the in-place add of a precomputed ΔW; Z-Image LoKr->LoRA at rank 64 <= 0.1x a dense SVD; "
    "training >= 2x ComfyUI's TrainLoraNode steps/s; adapter fwd+bwd >= 5x cheaper than materialising kron; "
    "adapted-layer overhead at 4096 tokens LoKr <= 15%, LoHa <= 30%."
)


def plan(quick: bool, cuda: bool) -> list[tuple[str, list[str]]]:
    runs = [
        ("bench.bench_patch", ["--repeat", "3" if quick else "5"]),
        ("bench.bench_lowrank", ["--repeat", "3"]),
        ("bench.bench_convert", ["--repeat", "2" if quick else "3", "--dense-repeat", "1"]),
        ("bench.bench_train", ["--repeat", "2", "--layer-repeat", "2"]),
        ("bench.bench_train", ["--skip-layers", "--repeat", "2", "--steps", "10", "--dim", "512", "--blocks", "4"]),
        ("bench.bench_memory", []),
        ("bench.bench_memory_comfy", []),
        ("bench.bench_scaling", ["--out", "bench/plots"] + (["--quick"] if quick else [])),
    ]
    if cuda:
        runs.append(("bench.bench_patch", ["--device", "cuda", "--skip-load"]))
    return runs


def run_one(module: str, args: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    body = _tables(proc.stdout)
    if proc.returncode != 0:
        body += f"\n\n**{module} failed (exit {proc.returncode}):**\n```\n{proc.stderr[-3000:]}\n```"
    return f"### `{module} {' '.join(args)}` ({seconds:.0f} s)\n\n{body}\n", seconds


def _tables(stdout: str) -> str:
    """Keep the markdown the benchmark printed (drop ComfyUI's log noise and the repeated machine table)."""
    lines, in_machine = [], False
    for line in stdout.splitlines():
        if line.startswith("| property | value |"):
            in_machine = True
        elif in_machine and not line.startswith("|"):
            in_machine = False
        if not in_machine and not line.startswith(("WARNING", "Traceback")):
            lines.append(line)
    return "\n".join(lines).strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.md"))
    args = parser.parse_args(argv)
    plots = REPO / "bench" / "plots"
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    sections, total = [], 0.0
    for module, module_args in plan(args.quick, torch.cuda.is_available()):
        sys.stderr.write(f"[bench] {module} {' '.join(module_args)}\n")
        section, seconds = run_one(module, module_args)
        sections.append(section)
        total += seconds
        _write(args.out, plots, sections, total)  # after every benchmark, so a stopped run keeps its results
    sys.stderr.write(f"[bench] wrote {args.out} in {total:.0f} s\n")


def _write(out: str, plots: Path, sections: list[str], total: float) -> None:
    header = [
        "# HadaKron benchmark results",
        "",
        "Every figure is a ratio of HadaKron to the alternative measured in "
        "the same run (medians; min–max in the raw columns). Lower is better unless the row says speed-up.",
        "",
        TARGETS_NOTE,
        "",
        "## Machine",
        "",
        machine_markdown(),
        "",
        f"Total wall time {total:.0f} s. Plots: "
        + ", ".join(f"`bench/plots/{p.name}`" for p in sorted(plots.glob("*.png"))),
        "",
    ]
    Path(out).write_text("\n".join(header + sections), encoding="utf-8")


if __name__ == "__main__":
    main()
