"""``python -m hadakron resize IN --out OUT (--rank R | --energy E)``: change a LoRA's rank."""

from __future__ import annotations

from ..merge.combine import resize_lora
from .combine import add_single_adapter_parser, run_single_adapter


def add_parser(subparsers) -> None:
    """Register ``resize``."""
    add_single_adapter_parser(
        subparsers,
        "resize",
        "LoRA file",
        help="resize a LoRA's rank (optimal truncation per layer)",
        description="Thin QR of up and downᵀ and an SVD of the small core per layer; reports kept energy and "
        "relative error.",
    )


def run(args) -> int:
    """Resize IN and write OUT."""
    return run_single_adapter(resize_lora, args)
