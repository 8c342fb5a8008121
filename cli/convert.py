"""``python -m hadakron convert --input IN --output OUT --target {default,other,comfy}``: key formats."""

from __future__ import annotations

import json
import sys

from ..converters import TARGETS, FormatOptions, convert_file
from ..keymap.families import FAMILIES


def add_parser(subparsers) -> None:
    """Register ``convert`` (musubi ``convert_lora.py`` spellings, plus ``comfy`` and ``--family``)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an adapter between key formats: default (sd-scripts/musubi), other (diffusers), comfy",
        description="Rename every key to the target style; module names come from each family's module table "
        "(ComfyUI's model definitions), every LoHa/LoKr key and all metadata are kept, alphas keep the effect "
        "(other: LoRA alpha folded into lora_A/lora_B), full-matrix LoKr gets the portable alpha.",
    )
    parser.add_argument("--input", required=True, metavar="IN", help="adapter file to convert")
    parser.add_argument("--output", "--out", required=True, dest="output", metavar="OUT", help="file to write")
    parser.add_argument("--target", required=True, choices=TARGETS, help="key format to write")
    parser.add_argument(
        "--diffusers_prefix", default="diffusion_model", help="prefix of 'other' keys (default diffusion_model)"
    )
    parser.add_argument("--family", choices=("auto", *FAMILIES), default="auto", help="model family (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    """Convert IN to OUT and print the report."""
    options = FormatOptions(args.target, args.diffusers_prefix, None if args.family == "auto" else args.family)
    report = convert_file(args.input, args.output, options, overwrite=args.overwrite)
    print_report(report, args.json)
    return 0


def print_report(report, as_json: bool) -> None:
    """The report on stdout (text or JSON)."""
    text = json.dumps(report.to_dict(), indent=2) if as_json else report.render()
    sys.stdout.write(text + "\n")
