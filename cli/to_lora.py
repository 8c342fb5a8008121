"""``python -m hadakron to-lora IN --out OUT (--rank R | --energy E)``: LoHa/LoKr to LoRA."""

from __future__ import annotations

from ..loading import read_adapter
from ..merge.combine import to_lora
from .combine import DTYPES, add_output_arguments, finish


def add_parser(subparsers) -> None:
    """Register ``to-lora``."""
    parser = subparsers.add_parser(
        "to-lora",
        help="convert a LoHa/LoKr (or hybrid) adapter to LoRA at a rank or kept energy",
        description="Optimal per-layer conversion without dense SVDs: LoHa via its exact rank r1·r2 form, "
        "LoKr via the SVDs of its two factors.",
    )
    parser.add_argument("adapter", metavar="IN", help="adapter file")
    add_output_arguments(parser, required_target=True)


def run(args) -> int:
    """Convert IN and write OUT."""
    source = read_adapter(args.adapter, args.convention)
    return finish(to_lora(source, args.rank, args.energy, DTYPES[args.dtype]), args)
