"""Metadata, module naming and the merge report for adapter files HadaKron writes (formats.md §16).

Outputs keep the first input's metadata (training info, ``modelspec.*``), drop what no longer
describes the tensors (hashes, LoKr factor, network args of another algorithm) and say what was
merged: ``hadakron.producer``, ``hadakron.convention`` (alphas follow LyCORIS: scale = alpha/rank),
``ss_network_*`` and ``hadakron.merge`` (JSON).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from .. import __version__
from ..keymap.resolver import normalise, split_producer_prefix

PRODUCER = f"hadakron {__version__}"
OUTPUT_CONVENTION = "lycoris"
# Keys that describe the old tensors and would now be wrong.
STALE_KEYS = ("sshs_model_hash", "sshs_legacy_hash", "ss_lokr_factor")


def merged_metadata(base: dict[str, str], kinds: set[str], lora_ranks: list[int], info: dict) -> dict[str, str]:
    """Metadata for a combined/converted adapter.

    Args:
        base: the first input file's metadata (kept, minus :data:`STALE_KEYS`).
        kinds: algorithms of the written modules (``lora``, ``loha``, ``lokr``, ``diff``).
        lora_ranks: ranks of the written LoRA modules (``ss_network_dim`` = the largest; alpha = rank).
        info: what was merged and how (stored as ``hadakron.merge`` JSON).
    """
    meta = {k: str(v) for k, v in base.items() if k not in STALE_KEYS and not k.startswith("hadakron.")}
    meta["hadakron.producer"] = PRODUCER
    meta["hadakron.convention"] = OUTPUT_CONVENTION
    meta["hadakron.merge"] = json.dumps(info, sort_keys=True)
    if kinds <= {"lora"}:
        meta["ss_network_module"] = "networks.lora"
        meta.pop("ss_network_args", None)
    else:
        meta.setdefault("ss_network_module", "lycoris.kohya")
    if lora_ranks:
        meta["ss_network_dim"] = str(max(lora_ranks))
        meta["ss_network_alpha"] = str(max(lora_ranks))
    return meta


def source_label(path: str) -> str:
    """A file's base name (full paths never go into metadata)."""
    return os.path.basename(str(path))


def name_style(module_names) -> str | None:
    """The underscore prefix (``lora_unet_``, ``lycoris_`` …) of a file's names, or ``None`` for dotted names."""
    for name in module_names:
        namespace, rest = split_producer_prefix(name)
        if namespace != "unet":
            continue
        prefix = name[: len(name) - len(rest)]
        return prefix if prefix.endswith("_") else None
    return None


def canonical_module(name: str) -> str:
    """Spelling-independent identity of a module (namespace + underscore-normalised path)."""
    namespace, rest = split_producer_prefix(name)
    return f"{namespace}:{normalise(rest)}"


def output_module_name(name: str, style: str | None) -> str:
    """``name`` rewritten in the first file's underscore style when that style is known, else unchanged."""
    if style is None:
        return name
    namespace, rest = split_producer_prefix(name)
    if namespace != "unet" or name.startswith(style):
        return name
    return style + normalise(rest)


# --------------------------------------------------------------------------------------------- report


@dataclass
class LayerReport:
    """What was written for one module.

    Attributes:
        kind: ``lora``, ``loha``, ``lokr`` (native factors kept), ``diff`` (full delta) or ``zero`` (ΔW = 0, omitted).
        rank: written rank (``None`` for diffs).
        kept_energy, rel_error: truncation figures (1 and 0 when exact).
        energy: ``‖ΔW‖²_F`` of the exact sum (0 when not computed), the weight in the overall figures.
    """

    name: str
    kind: str
    rank: int | None
    kept_energy: float = 1.0
    rel_error: float = 0.0
    energy: float = 0.0


@dataclass
class CombineResult:
    """A combined adapter ready to save, with a per-layer report."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layers: list[LayerReport] = field(default_factory=list)
    mode: str = "exact"

    @property
    def kept_energy(self) -> float:
        """Overall kept energy: ``Σ kept·‖ΔW‖² / Σ ‖ΔW‖²`` over the truncated layers (1 when exact)."""
        total = sum(layer.energy for layer in self.layers)
        if total == 0.0:
            return 1.0
        return sum(layer.kept_energy * layer.energy for layer in self.layers) / total

    @property
    def rel_error(self) -> float:
        """Overall relative Frobenius error over all layers: ``√(Σ‖ΔW−ΔW_k‖² / Σ‖ΔW‖²)``."""
        total = sum(layer.energy for layer in self.layers)
        if total == 0.0:
            return 0.0
        return math.sqrt(sum(layer.rel_error**2 * layer.energy for layer in self.layers) / total)

    def render(self, worst: int = 10) -> str:
        """A short text report: counts per kind, overall figures and the worst layers."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        lines = [
            f"mode {self.mode}: {len(self.layers)} modules ({kinds}), {len(self.tensors)} tensors",
            f"overall kept energy {self.kept_energy:.6f}, relative error {self.rel_error:.3e}",
        ]
        ranks = [layer.rank for layer in self.layers if layer.kind == "lora"]
        if ranks:
            lines.append(f"LoRA ranks {min(ranks)}..{max(ranks)} (alpha = rank)")
        lossy = sorted((x for x in self.layers if x.rel_error > 0), key=lambda x: x.rel_error, reverse=True)
        for layer in lossy[:worst]:
            lines.append(
                f"  {layer.name}: rank {layer.rank}, kept {layer.kept_energy:.6f}, error {layer.rel_error:.3e}"
            )
        if len(lossy) > worst:
            lines.append(f"  … {len(lossy) - worst} more lossy layers")
        return "\n".join(lines)
