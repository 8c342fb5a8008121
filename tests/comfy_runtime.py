"""Compatibility alias: the harness lives in demo/runtime.py (shared by tests and the demo)."""

import sys

from demo import runtime as _module

sys.modules[__name__] = _module
