#!/usr/bin/env bash
# Start a ComfyUI server with HadaKron for a person to use in a browser (after README's two commands).
# Uses the demo's base folder (tiny demo model, VAE, dataset and adapters) unless BASE is given.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
BASE="${BASE:-$ROOT/demo-out/comfy}"
PORT="${PORT:-8188}"
.venv/bin/python -c "from pathlib import Path; from demo.runtime import prepare_base_dir; prepare_base_dir(Path('$BASE'))"
echo "[serve] ComfyUI with HadaKron on http://127.0.0.1:$PORT (base folder $BASE); Ctrl+C stops it"
cd .comfyui
exec ../.venv/bin/python main.py --cpu --listen 127.0.0.1 --port "$PORT" --base-directory "$BASE" \
  --disable-auto-launch --database-url sqlite:///:memory:
