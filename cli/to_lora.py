"""``python -m hadakron to-lora IN --out OUT (--rank R | --energy E)``: LoHa/LoKr to LoRA."""

from __future__ import annotations

from ..merge.combine import to_lora
from .combine import add_single_adapter_parser, run_single_adapter


def add_parser(subparsers) -> None:
    """Register ``to-lora``."""
    add_single_adapter_parser(
        subparsers,
        "to-lora",
        "adapter file",
        help="convert a LoHa/LoKr (or hybrid) adapter to LoRA at a rank or kept energy",
        description="Optimal per-layer conversion without dense SVDs: LoHa via its exact rank r1·r2 form, "
        "LoKr via the SVDs of its two factors.",
    )


def run(args) -> int:
    """Convert IN and write OUT."""
    return run_single_adapter(to_lora, args)
