"""Helpers shared by commands: repeated ``--adapter``/``--strength``/``--convention``, usage errors."""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters import CONVENTIONS
from ..common.errors import ConventionError


class CliUsageError(ConventionError):
    """Options that do not fit together (exit code 2, like argparse's own usage errors)."""


@dataclass
class AdapterArg:
    """One ``--adapter`` with the ``--strength``/``--convention``/``--blocks`` given at its position."""

    path: str
    strength: float = 1.0
    convention: str = "auto"
    blocks: str = ""


def add_adapter_arguments(parser, blocks: bool = False, required: bool = True) -> None:
    """``--adapter PATH`` (repeatable) with ``--strength S`` and ``--convention C`` matched by order."""
    parser.add_argument(
        "--adapter", action="append", required=required, metavar="PATH", help="adapter file; repeat for several"
    )
    parser.add_argument(
        "--strength",
        action="append",
        type=float,
        metavar="S",
        help="strength of the adapter at the same position (default 1.0)",
    )
    parser.add_argument(
        "--convention",
        action="append",
        choices=CONVENTIONS,
        help="alpha convention of the adapter at the same position (default auto)",
    )
    if blocks:
        parser.add_argument(
            "--blocks",
            action="append",
            metavar="SPEC",
            help="per-block strengths of the adapter at the same position, e.g. '0-9:0.5, 10-39:1.0'",
        )


def matched_by_order(values: list | None, count: int, default, flag: str) -> list:
    """``values`` padded with ``default`` to ``count`` items; more values than adapters is an error."""
    values = list(values or [])
    if len(values) > count:
        raise CliUsageError(f"{len(values)} {flag} values for {count} --adapter(s); give at most one per adapter")
    return values + [default] * (count - len(values))


def adapter_args(args) -> list[AdapterArg]:
    """The adapters of a parsed command line, each with its own strength/convention/blocks."""
    paths = list(args.adapter or [])
    strengths = matched_by_order(args.strength, len(paths), 1.0, "--strength")
    conventions = matched_by_order(args.convention, len(paths), "auto", "--convention")
    blocks = matched_by_order(getattr(args, "blocks", None), len(paths), "", "--blocks")
    return [AdapterArg(*item) for item in zip(paths, strengths, conventions, blocks, strict=True)]
