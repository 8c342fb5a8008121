"""Loading adapters onto a model: read a file, resolve keys, plan patches, report (pure engine)."""

from .blocks import parse_block_strengths
from .plan import LoadOptions, PlannedPatch, plan_adapter
from .report import LoadReport
from .source import AdapterSource, read_adapter

__all__ = [
    "AdapterSource",
    "LoadOptions",
    "LoadReport",
    "PlannedPatch",
    "parse_block_strengths",
    "plan_adapter",
    "read_adapter",
]
