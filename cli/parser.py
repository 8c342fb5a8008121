"""The argument parser every ``python -m hadakron`` command shares.

* Every long flag works as ``--a_b`` and ``--a-b``: after the commands are registered,
  :func:`add_spelling_aliases` maps the other spelling of each option to the same action (help
  shows the spelling the command registered).
* Usage errors print one line (``hadakron: <command>: <problem> (see --help)``) and exit 2.
"""

from __future__ import annotations

import argparse
import sys

USAGE_EXIT = 2


class HadaKronArgumentParser(argparse.ArgumentParser):
    """``ArgumentParser`` with one-line usage errors; subparsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"hadakron: {self.prog.removeprefix('hadakron ')}: {message} (see --help)\n")
        raise SystemExit(USAGE_EXIT)


def other_spelling(option: str) -> str | None:
    """``--a-b`` <-> ``--a_b`` (``None`` for short flags and names without either separator)."""
    if not option.startswith("--"):
        return None
    name = option[2:]
    if "-" in name:
        return "--" + name.replace("-", "_")
    if "_" in name:
        return "--" + name.replace("_", "-")
    return None


def add_spelling_aliases(parser: argparse.ArgumentParser) -> None:
    """Register the other spelling of every long option of ``parser`` and of all its subparsers."""
    table = parser._option_string_actions  # shared with the parser's argument groups
    for option, action in list(table.items()):
        alias = other_spelling(option)
        if alias and alias not in table:
            table[alias] = action
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                add_spelling_aliases(sub)


def say(text: str) -> None:
    """Print a command's result on stdout."""
    sys.stdout.write(text + "\n")


def warn(message: str) -> None:
    """One warning line on stderr (the command keeps running)."""
    sys.stderr.write(f"hadakron: warning: {message}\n")


class DeprecatedFlag(argparse.Action):
    """A flag kept for old command lines: sets ``dest`` like its replacement and warns once."""

    def __init__(self, option_strings, dest, replacement: str, const=True, **kwargs):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=0, const=const, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        warn(f"{option_string} is deprecated; use {self.replacement}")
        setattr(namespace, self.dest, self.const)
