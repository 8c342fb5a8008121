#!/usr/bin/env bash
# Every benchmark in one run (CPU; GPU variants too when a CUDA device is present).
# Writes bench/results.md and bench/plots/*.png. Extra arguments go to bench.run_all (e.g. --quick).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m bench.run_all "$@"
