"""Start a real ComfyUI server (``main.py --cpu``) on loopback with this pack installed, for end-to-end tests.

Stdlib only (subprocess, urllib, socket, json); does not import ComfyUI into the test process.
The server is stopped by its own PID, never by process name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.runtime import COMFY_DIR, PACK_DIR_NAME, prepare_base_dir


class ComfyServerError(RuntimeError):
    """The server died, did not start in time, rejected a prompt, or a prompt failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyServer:
    """A running server. ``url`` has no trailing slash; the log holds ComfyUI's stdout and stderr."""

    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    # --- raw HTTP -------------------------------------------------------------------------------
    def request(self, method: str, path: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """``(status, decoded JSON or text)`` for ``path`` (e.g. ``/object_info``); HTTP errors are returned."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        text = body.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise ComfyServerError(f"GET {path} -> {status}: {str(body)[:2000]}")
        return body

    # --- ComfyUI API ----------------------------------------------------------------------------
    def object_info(self, node: str | None = None) -> dict:
        """``/object_info`` (all nodes) or the schema of one node id (``{}`` if unknown)."""
        if node is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{node}").get(node, {})

    def post_prompt(self, graph: dict) -> str:
        """Queue an API-format graph; returns the prompt id. Raises with ``node_errors`` on rejection."""
        status, body = self.request("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ComfyServerError(f"POST /prompt rejected ({status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll ``/history/<id>`` until the prompt finished (success or error); returns its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            self._check_alive()
            time.sleep(0.1)
        raise ComfyServerError(f"prompt {prompt_id} not finished after {timeout:.0f}s\n{self.log_tail()}")

    def run_prompt(self, graph: dict, timeout: float = 120.0) -> dict:
        """``post_prompt`` + ``wait_history``; raises with the error messages and log tail unless it succeeded."""
        entry = self.wait_history(self.post_prompt(graph), timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            messages = json.dumps(status.get("messages", []), indent=1)[:6000]
            raise ComfyServerError(f"prompt failed: {messages}\n{self.log_tail()}")
        return entry

    # --- log and process ------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "--- ComfyUI log tail ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ComfyServerError(f"ComfyUI exited with code {code}\n{self.log_tail()}")

    def custom_node_import_lines(self, folder: str = PACK_DIR_NAME) -> list[str]:
        """Log lines about importing ``custom_nodes/<folder>`` (timing line, failures, skips)."""
        pattern = re.compile(re.escape(f"custom_nodes{os.sep}{folder}") + r"(?=$|[\s/\\:'\"])")
        return [line for line in self.log_text().splitlines() if pattern.search(line)]


def _wait_until_ready(server: ComfyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server._check_alive()
        try:
            with urllib.request.urlopen(server.url + "/system_stats", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise ComfyServerError(f"ComfyUI not ready after {timeout:.0f}s\n{server.log_tail()}")


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM to this PID only
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


@contextlib.contextmanager
def comfy_server(
    base_dir: Path,
    *,
    test_nodes: bool = True,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 180.0,
) -> Iterator[ComfyServer]:
    """Run ComfyUI 0.3.75 on CPU at 127.0.0.1:<free port> with ``base_dir`` as its base directory.

    Args:
        base_dir: temp folder; gets ``custom_nodes/HadaKron`` (symlink to this repo), the test pack
            (if ``test_nodes``), ``models/*``, ``input``, ``output`` and a seeded ``user/default`` settings file.
            Put model files into ``base_dir/models/...`` before entering.
        test_nodes: also install demo/node_pack as ``custom_nodes/HadaKronTestNodes``.
        extra_args: more ``main.py`` flags.
        startup_timeout: seconds to wait for ``GET /system_stats`` == 200.

    Yields:
        ``ComfyServer``; the process is terminated (by PID) on exit.
    """
    if not (COMFY_DIR / "main.py").is_file():
        raise ComfyServerError(f"ComfyUI tree missing at {COMFY_DIR}: run `bash scripts/setup.sh`")
    base_dir = prepare_base_dir(base_dir, test_nodes=test_nodes)
    port = free_port()
    log_path = base_dir / "comfyui.log"
    cmd = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base_dir),
        "--disable-auto-launch",
        "--database-url",
        "sqlite:///:memory:",
        *extra_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    server = ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base_dir, log_path=log_path, process=process)
    try:
        _wait_until_ready(server, startup_timeout)
        yield server
    finally:
        _stop(process)
