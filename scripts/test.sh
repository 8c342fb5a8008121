#!/usr/bin/env bash
# Full check: set up the runtime (idempotent), lint, then run every test against real ComfyUI 0.3.75.
# Extra arguments are passed to pytest (e.g. `bash scripts/test.sh -m "not server"`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh --browser

echo "[test] ruff check + format check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "[test] pytest"
# pytest exits 5 when nothing was collected; `set -e` turns that into a failure too.
.venv/bin/python -m pytest -q -rs "$@"
