#!/usr/bin/env bash
# README's first command: set up everything (idempotent), then run the demo on the embedded default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m demo "$@"
