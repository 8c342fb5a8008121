"""Every benchmark script runs end to end at toy sizes and prints its ratio table (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.comfy

SMOKE_RUNS = {
    "bench_patch": ["--skip-layers", "--modules", "24", "--dim", "128", "--repeat", "1"],
    "bench_train": [
        *("--steps", "2", "--repeat", "1", "--dim", "128", "--blocks", "1", "--latent", "8"),
        *("--sizes", "128", "--tokens", "32", "64", "--layer-repeat", "1"),
    ],
    "bench_lowrank": ["--size", "256", "--w2-rank", "4", "--rank", "8", "--repeat", "1"],
    "bench_memory": ["--blocks", "1", "--dim", "128"],
    "bench_memory_comfy": ["--blocks", "3", "--dim", "128", "--steps", "1"],
}


@pytest.mark.parametrize("module", sorted(SMOKE_RUNS))
def test_benchmark_runs_and_prints_ratios(module):
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *SMOKE_RUNS[module]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| measure | ratio |" in proc.stdout
    assert "| torch |" in proc.stdout or module.startswith("bench_memory")
