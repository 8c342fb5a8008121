"""Plain-text report sections shared by the load report and the conversion report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def section_lines(sections: Iterable[tuple[str, Sequence[str]]], max_rows: int) -> list[str]:
    """``  title: count`` and up to ``max_rows`` indented rows for every non-empty ``(title, rows)``."""
    lines: list[str] = []
    for title, rows in sections:
        if rows:
            lines.append(f"  {title}: {len(rows)}")
            lines += [f"    {r}" for r in rows[:max_rows]]
            if len(rows) > max_rows:
                lines.append(f"    ... {len(rows) - max_rows} more")
    return lines
