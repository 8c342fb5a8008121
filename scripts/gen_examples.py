"""Render demo/examples.py into example_workflows/*.json (UI format) with a live server's node definitions.

Usage: .venv/bin/python scripts/gen_examples.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.examples import EXAMPLES  # noqa: E402
from demo.server import comfy_server  # noqa: E402
from demo.workflows import build_ui_workflow  # noqa: E402


def main() -> None:
    out = REPO / "example_workflows"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, comfy_server(Path(tmp), test_nodes=False) as server:
        info = server.object_info()
    for name, spec in EXAMPLES.items():
        workflow = build_ui_workflow(spec(), info)
        (out / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n", encoding="utf-8")
        print(f"wrote example_workflows/{name}.json")


if __name__ == "__main__":
    main()
