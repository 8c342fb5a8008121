"""Compatibility alias: the harness lives in demo/tiny.py (shared by tests and the demo)."""

import sys

from demo import tiny as _module

sys.modules[__name__] = _module
