"""``python -m hadakron hv15-to-comfy SRC DST [--lokr_rank N] [--reverse] [--lossless]``."""

from __future__ import annotations

from ..converters import HV15_SPEC
from .zimage import add_qkv_parser, run_qkv


def add_parser(subparsers) -> None:
    """Register ``hv15-to-comfy``."""
    add_qkv_parser(
        subparsers,
        "hv15-to-comfy",
        help="HunyuanVideo 1.5: fuse img/txt q/k/v into ComfyUI's qkv (LoRA, LoHa and LoKr) and rename",
        description="Renames img_mlp_fc1/fc2 -> img_mlp_0/2 and img_mod_linear -> img_mod_lin (and txt) and fuses "
        "img_attn_q/k/v, txt_attn_q/k/v: LoRA and LoHa exactly, LoKr by the optimal truncated SVD (or --lossless "
        "to keep LoKr split, HadaKron's loader only). --reverse splits back.",
    )


def run(args) -> int:
    """Convert SRC to DST and print the report."""
    return run_qkv(HV15_SPEC, args)
