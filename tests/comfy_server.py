"""Compatibility alias: the harness lives in demo/server.py (shared by tests and the demo)."""

import sys

from demo import server as _module

sys.modules[__name__] = _module
