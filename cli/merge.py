"""``hadakron merge``: bake adapters into a diffusion-model safetensors file (streamed, key by key)."""

from __future__ import annotations

import json
import os

from ..loading import parse_block_strengths
from ..merge import BakeAdapter, bake_file
from .common import CliUsageError, adapter_args, add_adapter_arguments
from .parser import DeprecatedFlag, say


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="bake adapters into a diffusion-model file",
        description="Bake one or more adapters into a diffusion-model safetensors file in ComfyUI's native key "
        "naming. The output keeps every key, dtype, shape and metadata entry of the input; weights are "
        "computed in fp32 and rounded back (fp8: stochastic rounding seeded by the key).",
    )
    parser.add_argument("--model", required=True, metavar="MODEL", help="diffusion-model .safetensors to bake into")
    add_adapter_arguments(parser, blocks=True)
    parser.add_argument("--out", required=True, metavar="OUT", help="output .safetensors (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--prefer-lycoris",
        action="store_true",
        help="compute every delta with the LyCORIS library (needs lycoris-lora; slower, dense ΔW)",
    )
    parser.add_argument("--lycoris", dest="prefer_lycoris", action=DeprecatedFlag, replacement="--prefer-lycoris")
    parser.add_argument("--verbose", action="store_true", help="also print each adapter's full load report")
    parser.add_argument("--json", action="store_true", help="print the bake report as JSON")


def run(args) -> int:
    if _same_file(args.model, args.out):
        raise CliUsageError("--out names the input model; write to another file")
    adapters = [
        BakeAdapter(a.path, a.strength, a.convention, parse_block_strengths(a.blocks)) for a in adapter_args(args)
    ]
    report = bake_file(args.model, adapters, args.out, overwrite=args.overwrite, prefer_lycoris=args.prefer_lycoris)
    say(json.dumps(report.to_dict(), indent=1, default=str) if args.json else report.render(details=args.verbose))
    return 0


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
