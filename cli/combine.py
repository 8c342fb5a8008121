"""``python -m hadakron combine A B ... --out OUT [--weights …] [--mode exact|svd] [--rank R | --energy E]``."""

from __future__ import annotations

import sys

import torch

from ..adapters import CONVENTIONS
from ..loading import read_adapter
from ..merge.combine import combine_adapters, save_result
from .common import CliUsageError

DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_parser(subparsers) -> None:
    """Register ``combine``."""
    parser = subparsers.add_parser(
        "combine",
        help="weighted sum of adapter files (LoRA/LoHa/LoKr, same family) as one adapter",
        description="Sum adapters exactly (mode exact: concatenated LoRA factors where exact, otherwise full "
        "diffs) or re-factorise every layer to LoRA at a rank or kept energy (mode svd), reporting the "
        "kept energy and relative error per layer and overall.",
    )
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter files, summed in this order")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per file (default 1.0)")
    parser.add_argument(
        "--mode", choices=("exact", "svd"), help="exact (default) or svd (the default when --rank/--energy is given)"
    )
    add_output_arguments(parser, required_target=False)


def add_output_arguments(parser, required_target: bool) -> None:
    """``--out``, ``--rank``/``--energy``, ``--convention``, ``--dtype``, ``--overwrite`` (shared by to-lora/resize)."""
    parser.add_argument("--out", required=True, metavar="OUT", help="output .safetensors file")
    target = parser.add_mutually_exclusive_group(required=required_target)
    target.add_argument("--rank", type=int, metavar="R", help="target LoRA rank per layer")
    target.add_argument(
        "--energy", type=float, metavar="E", help="keep the smallest rank with this share of Σσ² (e.g. 0.9999)"
    )
    parser.add_argument(
        "--convention", choices=CONVENTIONS, default="auto", help="alpha convention of the inputs (default auto)"
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default="auto", help="dtype of the written factors (auto: the first input's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args) -> int:
    """Combine the files and write OUT."""
    mode = args.mode or ("svd" if args.rank is not None or args.energy is not None else "exact")
    if mode == "exact" and (args.rank is not None or args.energy is not None):
        raise CliUsageError("--rank/--energy need --mode svd")
    sources = [read_adapter(path, args.convention) for path in args.adapters]
    if args.weights is not None and len(args.weights) != len(sources):
        raise CliUsageError(f"{len(args.weights)} --weights for {len(sources)} adapters")
    result = combine_adapters(sources, args.weights, mode, args.rank, args.energy, DTYPES[args.dtype])
    return finish(result, args)


def add_single_adapter_parser(subparsers, name: str, adapter_help: str, **texts) -> None:
    """Register a one-adapter command (``to-lora``, ``resize``): IN plus :func:`add_output_arguments`.

    ``texts`` are the subparser's ``help`` and ``description``.
    """
    parser = subparsers.add_parser(name, **texts)
    parser.add_argument("adapter", metavar="IN", help=adapter_help)
    add_output_arguments(parser, required_target=True)


def run_single_adapter(transform, args) -> int:
    """Read IN, apply ``transform(source, rank, energy, dtype)`` and write OUT."""
    source = read_adapter(args.adapter, args.convention)
    return finish(transform(source, args.rank, args.energy, DTYPES[args.dtype]), args)


def finish(result, args) -> int:
    """Save the result and print the report."""
    path = save_result(result, args.out, overwrite=args.overwrite)
    sys.stdout.write(f"{result.render()}\nwrote {path}\n")
    return 0
