"""The load report: what a file is, what it targets, and exactly what happened to each module."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..common.sections import section_lines


@dataclass
class LoadReport:
    """Everything the loader learned and did, listed per module.

    ``matched`` holds ``(file module, target, algo(s))``; ``unmatched`` file modules with no target;
    ``shape_mismatched`` ``(file module, target, detail)``; ``hybrid`` modules carrying several
    algorithms (applied LoHa, LoKr, LoRA in that order); ``consumed_non_weight`` keys such as
    ``lokr_factor`` that carry information but no weight; ``unknown_keys`` keys of no known role.
    """

    file: str = ""
    producer: str = ""
    convention: str = ""
    convention_reason: str = ""
    family_model: str | None = None
    family_adapter: str | None = None
    algo_counts: dict[str, int] = field(default_factory=dict)
    ranks: Counter = field(default_factory=Counter)
    alphas: Counter = field(default_factory=Counter)
    lokr_factors: Counter = field(default_factory=Counter)
    persisted_factor: tuple[int | None, int | None] = (None, None)
    matched: list[tuple[str, str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, str, str]] = field(default_factory=list)
    filtered_out: list[str] = field(default_factory=list)
    other_namespace: list[str] = field(default_factory=list)
    hybrid: list[str] = field(default_factory=list)
    consumed_non_weight: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    patches: int = 0

    def summary_line(self) -> str:
        algos = ", ".join(f"{n} {a}" for a, n in sorted(self.algo_counts.items()))
        return (
            f"{self.patches} patches from {len(self.matched)} modules ({algos}); "
            f"{len(self.unmatched)} unmatched, {len(self.shape_mismatched)} shape-mismatched"
        )

    def to_dict(self) -> dict:
        """JSON-friendly form (for the web panel and the CLI's ``--json``)."""
        out = {k: v for k, v in vars(self).items()}
        for key in ("ranks", "alphas", "lokr_factors"):
            out[key] = {str(k): v for k, v in getattr(self, key).items()}
        return out

    def render(self, max_rows: int = 400) -> str:
        """Readable multi-line text (shown on the node and by ``python -m hadakron inspect``)."""
        lines = [
            f"HadaKron load report: {self.file}",
            f"  producer: {self.producer}",
            f"  convention: {self.convention} ({self.convention_reason})",
            f"  family: adapter {self.family_adapter or 'unknown'}, model {self.family_model or 'n/a'}",
            f"  algorithms: {_fmt(self.algo_counts)}",
            f"  ranks: {_fmt(self.ranks)}; alphas: {_fmt(self.alphas)}",
        ]
        if self.lokr_factors:
            lines.append(f"  LoKr factor implied by shapes: {_fmt(self.lokr_factors)}")
        buf, meta = self.persisted_factor
        if buf is not None or meta is not None:
            lines.append(f"  persisted factor: buffer lokr_factor={buf}, metadata ss_lokr_factor={meta}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  result: {self.summary_line()}")
        sections = (
            ("matched", [f"{m} -> {t} [{a}]" for m, t, a in self.matched]),
            ("UNMATCHED (no layer in this model)", self.unmatched),
            ("SHAPE MISMATCH", [f"{m} -> {t}: {d}" for m, t, d in self.shape_mismatched]),
            ("filtered out by include/exclude", self.filtered_out),
            ("text-encoder modules not applied (no CLIP given)", self.other_namespace),
            ("hybrid modules (applied LoHa, LoKr, LoRA in that order)", self.hybrid),
            ("non-weight keys consumed", self.consumed_non_weight),
            ("unknown keys ignored", self.unknown_keys),
        )
        lines += section_lines(sections, max_rows)
        return "\n".join(lines)


def _fmt(counter) -> str:
    if not counter:
        return "-"
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))
