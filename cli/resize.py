"""``python -m hadakron resize IN --out OUT (--rank R | --energy E)``: change a LoRA's rank."""

from __future__ import annotations

from ..loading import read_adapter
from ..merge.combine import resize_lora
from .combine import DTYPES, add_output_arguments, finish


def add_parser(subparsers) -> None:
    """Register ``resize``."""
    parser = subparsers.add_parser(
        "resize",
        help="resize a LoRA's rank (optimal truncation per layer)",
        description="Thin QR of up and downᵀ and an SVD of the small core per layer; reports kept energy and "
        "relative error.",
    )
    parser.add_argument("adapter", metavar="IN", help="LoRA file")
    add_output_arguments(parser, required_target=True)


def run(args) -> int:
    """Resize IN and write OUT."""
    source = read_adapter(args.adapter, args.convention)
    return finish(resize_lora(source, args.rank, args.energy, DTYPES[args.dtype]), args)
