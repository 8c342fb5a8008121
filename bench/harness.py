"""Tiny benchmark harness: repeated timings, medians with min/max, machine info, ratio tables.

Usage::

    from bench.harness import Bench
    bench = Bench("patching")
    ours = bench.time("hadakron lokr", lambda: apply(...), repeat=5)
    ref = bench.time("comfy native lokr", lambda: native(...), repeat=5)
    bench.ratio("LoKr patch 5120²", ours, ref, target=0.7)   # ours / reference
    print(bench.markdown())

No absolute time is reported as a property of HadaKron: results are ratios (with the raw
medians shown for context), and targets are stated as "ratio <= target".
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Seconds per run over ``repeat`` runs (after ``warmup`` discarded runs)."""

    label: str
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        return min(self.runs)

    @property
    def high(self) -> float:
        return max(self.runs)


@dataclass
class Ratio:
    """``ours / reference`` (lower is better) with an optional target."""

    name: str
    ours: Timing
    reference: Timing
    target: float | None = None
    higher_is_better: bool = False

    @property
    def value(self) -> float:
        if self.higher_is_better:
            return self.reference.median / self.ours.median
        return self.ours.median / self.reference.median

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def machine_info() -> dict[str, str]:
    """Cores, memory, torch version and BLAS, for every results file."""
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            mem = handle.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "blas": blas_summary(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def blas_summary() -> str:
    """``BLAS_INFO`` and ``LAPACK_INFO`` from torch's build configuration (e.g. ``mkl / mkl``)."""
    config = torch.__config__.show()
    found = {name: re.search(rf"{name}=([^,\s]+)", config) for name in ("BLAS_INFO", "LAPACK_INFO")}
    return " / ".join(f"{name.split('_')[0]} {m.group(1)}" for name, m in found.items() if m) or "unknown"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Bench:
    """Collects timings and ratios for one benchmark script."""

    title: str
    timings: list[Timing] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def time(
        self,
        label: str,
        fn: Callable[[], object],
        repeat: int = 5,
        warmup: int = 1,
        setup: Callable[[], object] | None = None,
    ) -> Timing:
        """Run ``fn`` ``warmup + repeat`` times (``setup`` before each, untimed) and keep the timings."""
        runs = []
        for index in range(warmup + repeat):
            if setup is not None:
                setup()
            gc.collect()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if index >= warmup:
                runs.append(elapsed)
        timing = Timing(label, runs)
        self.timings.append(timing)
        return timing

    def time_interleaved(
        self, fns: dict[str, Callable[[], object]], repeat: int = 5, warmup: int = 1
    ) -> dict[str, Timing]:
        """Time several alternatives round-robin (one run of each per round), so a burst of load on a
        shared machine hits every alternative alike instead of all runs of one; ``{label: Timing}``."""
        runs: dict[str, list[float]] = {label: [] for label in fns}
        for index in range(warmup + repeat):
            for label, fn in fns.items():
                gc.collect()
                start = time.perf_counter()
                fn()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if index >= warmup:
                    runs[label].append(time.perf_counter() - start)
        timings = {label: Timing(label, values) for label, values in runs.items()}
        self.timings.extend(timings.values())
        return timings

    def ratio(
        self, name: str, ours: Timing, reference: Timing, target: float | None = None, higher_is_better: bool = False
    ) -> Ratio:
        """Record ``ours / reference`` (or its inverse when ``higher_is_better``, e.g. a speed-up)."""
        ratio = Ratio(name, ours, reference, target, higher_is_better)
        self.ratios.append(ratio)
        return ratio

    def markdown(self) -> str:
        """Results as a markdown section (machine, ratios with targets, raw medians)."""
        lines = [
            f"## {self.title}",
            "",
            "| measure | ratio | target | met | ours median (min–max) s | reference median (min–max) s |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.ratios:
            target = "" if r.target is None else (f">= {r.target:g}" if r.higher_is_better else f"<= {r.target:g}")
            met = "" if r.met is None else ("yes" if r.met else "**NO**")
            lines.append(f"| {r.name} | {r.value:.4g} | {target} | {met} | {_fmt(r.ours)} | {_fmt(r.reference)} |")
        lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "title": self.title,
                "machine": machine_info(),
                "ratios": [
                    {
                        "name": r.name,
                        "ratio": r.value,
                        "target": r.target,
                        "met": r.met,
                        "ours": r.ours.runs,
                        "reference": r.reference.runs,
                    }
                    for r in self.ratios
                ],
            },
            indent=2,
        )


def machine_markdown() -> str:
    """The machine description block for results.md."""
    return "\n".join(["| property | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in machine_info().items()]])


def _fmt(t: Timing) -> str:
    return f"{t.median:.4g} ({t.low:.3g}–{t.high:.3g})"
