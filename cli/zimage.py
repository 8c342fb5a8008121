"""``python -m hadakron zimage-to-comfy SRC DST [--lokr_rank N] [--reverse] [--lossless]``."""

from __future__ import annotations

from ..converters import ZIMAGE_SPEC, QkvOptions, convert_qkv_file
from .common import CliUsageError
from .convert import print_report


def add_qkv_arguments(parser) -> None:
    """SRC, DST and the options every QKV command shares (musubi's spellings)."""
    parser.add_argument("src", metavar="SRC", help="adapter file (sd-scripts/musubi names, or ComfyUI with --reverse)")
    parser.add_argument("dst", metavar="DST", help="file to write")
    parser.add_argument(
        "--lokr_rank",
        type=int,
        metavar="N",
        help="LoRA rank for LoKr q/k/v (default: the smallest rank keeping 99.99%% of the energy)",
    )
    parser.add_argument("--reverse", action="store_true", help="split ComfyUI's fused qkv back into q/k/v")
    parser.add_argument(
        "--lossless",
        action="store_true",
        help="keep LoKr q/k/v split instead of converting them to LoRA (exact; see the report for which loaders)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def qkv_options(args) -> QkvOptions:
    """The parsed flags as :class:`QkvOptions`."""
    if args.lokr_rank is not None and args.lokr_rank < 1:
        raise CliUsageError("--lokr_rank must be at least 1")
    if args.reverse and args.lossless:
        raise CliUsageError("--lossless applies to the forward direction only")
    return QkvOptions(lokr_rank=args.lokr_rank, lossless=args.lossless, reverse=args.reverse)


def add_qkv_parser(subparsers, name: str, **texts) -> None:
    """Register a QKV command ``name``; ``texts`` are its ``help`` and ``description``."""
    add_qkv_arguments(subparsers.add_parser(name, **texts))


def run_qkv(spec, args) -> int:
    """Convert SRC to DST with ``spec`` and print the report."""
    report = convert_qkv_file(args.src, args.dst, spec, qkv_options(args), overwrite=args.overwrite)
    print_report(report, args.json)
    return 0


def add_parser(subparsers) -> None:
    """Register ``zimage-to-comfy``."""
    add_qkv_parser(
        subparsers,
        "zimage-to-comfy",
        help="Z-Image: fuse q/k/v into ComfyUI's attention.qkv (LoRA/LoHa exact, LoKr optimal LoRA)",
        description="Renames to ComfyUI's Z-Image names and fuses attention to_q/to_k/to_v into qkv: LoRA and "
        "LoHa exactly, LoKr by the optimal truncated SVD of the stacked delta (per-layer kept energy and error "
        "reported), or --lossless to keep LoKr split. --reverse splits back.",
    )


def run(args) -> int:
    """Convert SRC to DST and print the report."""
    return run_qkv(ZIMAGE_SPEC, args)
