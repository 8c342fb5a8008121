"""Per-block strengths: ``"0-9:0.5, 10-39:1.0"`` -> ``{block: multiplier}``."""

from __future__ import annotations

import re

from ..common.errors import ConventionError

_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*:\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


def parse_block_strengths(spec: str | None) -> dict[int, float]:
    """Parse a compact per-block strength string.

    Blocks are numbered over all of the model's block lists in model order (e.g. FLUX: double
    blocks first, then single blocks). Blocks not named keep strength 1.

    >>> parse_block_strengths("0-2:0.5, 4:0")
    {0: 0.5, 1: 0.5, 2: 0.5, 4: 0.0}
    """
    result: dict[int, float] = {}
    if not spec or not spec.strip():
        return result
    for item in spec.split(","):
        if not item.strip():
            continue
        match = _ITEM.match(item)
        if not match:
            raise ConventionError(f"block strengths: cannot read {item.strip()!r}; write e.g. '0-9:0.5, 10-39:1.0'")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConventionError(f"block strengths: range {first}-{last} runs backwards")
        for block in range(first, last + 1):
            result[block] = float(match.group(3))
    return result
