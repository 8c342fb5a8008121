"""What a conversion did, module by module (returned by the engine, printed by the CLI and the nodes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..common.sections import section_lines


@dataclass
class LayerFit:
    """One fused/split layer that went through a low-rank truncation (LoKr -> LoRA)."""

    module: str
    rank: int
    exact_rank: int
    kept_energy: float
    rel_error: float

    def line(self) -> str:
        return (
            f"{self.module}: LoRA rank {self.rank}/{self.exact_rank}, kept energy {self.kept_energy:.6f}, "
            f"relative Frobenius error {self.rel_error:.6f}"
        )


@dataclass
class ConversionReport:
    """Counts, notes and per-module details of one conversion.

    ``renamed`` holds ``(old module, new module)``; ``kept`` modules whose name could not be mapped
    (written unchanged); ``fused``/``split`` QKV groups; ``fits`` the lossy LoKr -> LoRA layers.
    """

    source: str = ""
    output: str = ""
    operation: str = ""
    family: str | None = None
    convention: str = ""
    keys_in: int = 0
    keys_out: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    synthesised_alpha: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    fits: list[LayerFit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Add a note once."""
        if text not in self.notes:
            self.notes.append(text)

    @property
    def lossless(self) -> bool:
        """True when no layer was truncated."""
        return all(fit.rel_error == 0.0 for fit in self.fits)

    def summary_line(self) -> str:
        """One line: what, how many keys, lossless or the worst layer error."""
        worst = max((f.rel_error for f in self.fits), default=0.0)
        quality = "exact" if not self.fits else f"{len(self.fits)} LoKr->LoRA layers, worst rel. error {worst:.6f}"
        return (
            f"{self.operation}: {self.keys_in} keys -> {self.keys_out} keys, {len(self.renamed)} modules renamed, "
            f"{len(self.fused)} QKV fused, {len(self.split)} split, {len(self.kept)} kept as is; {quality}"
        )

    def render(self, max_rows: int = 200) -> str:
        """Readable multi-line text."""
        lines = [
            f"HadaKron conversion: {self.source} -> {self.output or '(not written)'}",
            f"  family: {self.family or 'unknown'}; source convention: {self.convention}",
            f"  result: {self.summary_line()}",
            *[f"  note: {n}" for n in self.notes],
        ]
        sections = (
            ("LoKr -> LoRA (optimal truncated SVD)", [f.line() for f in self.fits]),
            ("QKV fused", self.fused),
            ("QKV split", self.split),
            ("alpha synthesised (same effect)", self.synthesised_alpha),
            ("scale folded into the factors", self.folded),
            ("kept as is (name not in the module tables)", self.kept),
            ("renamed", [f"{a} -> {b}" for a, b in self.renamed]),
        )
        lines += section_lines(sections, max_rows)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)
