"""``python -m hadakron <command>``: command-line front ends over the engine (no ComfyUI needed).

Adding a command: write ``cli/<name>.py`` with ``add_parser(subparsers)`` (create the subparser
with ``subparsers.add_parser("<command>", help=...)`` and add its flags, spelled ``--a-b``;
``--a_b`` then works too) and ``run(args) -> int | None``, then list the module in
:data:`COMMAND_MODULES`. Raise :class:`hadakron.common.errors.HadaKronError` (with ``path=``) for
problems: :func:`main` prints them as one line and exits non-zero. Shared flag helpers (repeated
``--adapter``/``--strength``/``--convention``) live in :mod:`.common`.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..common.errors import HadaKronError
from .common import CliUsageError
from .parser import USAGE_EXIT, HadaKronArgumentParser, add_spelling_aliases

# Module names under hadakron/cli/, in the order `--help` lists them.
COMMAND_MODULES = ("inspect", "merge", "combine", "to_lora", "resize", "convert", "zimage", "hv15")

EXIT_ERROR = 1
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
DEBUG_ENV = "HADAKRON_DEBUG"


def build_parser() -> HadaKronArgumentParser:
    """The top-level parser with every registered command."""
    parser = HadaKronArgumentParser(
        prog="hadakron",
        description="HadaKron LoRA/LoHa/LoKr tools. Every flag may be spelled --a-b or --a_b.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for added in set(subparsers.choices) - before:
            subparsers.choices[added].set_defaults(_run=module.run)
    add_spelling_aliases(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (never raises for user errors)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CliUsageError as exc:
        return _fail(f"{args.command}: {exc} (see --help)", USAGE_EXIT)
    except HadaKronError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except OSError as exc:
        return _fail(_os_error_line(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        line = f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)"
        return _fail(line, EXIT_INTERNAL)


def _os_error_line(exc: OSError) -> str:
    problem = exc.strerror or str(exc)
    return f"{exc.filename}: {problem}" if exc.filename else problem


def _fail(line: str, code: int) -> int:
    sys.stderr.write(f"hadakron: {' '.join(line.split())}\n")
    return code


__all__ = ["COMMAND_MODULES", "build_parser", "main"]
