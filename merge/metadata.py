"""Metadata, module naming and the merge report for adapter files HadaKron writes (formats.md §16).

Outputs keep the first input's metadata (training info, ``modelspec.*``), drop what no longer
describes the tensors (LoKr factor, network args of another network module) and say what was
merged: ``hadakron.producer``, ``hadakron.convention`` (alphas follow LyCORIS: scale = alpha/rank),
``ss_network_*`` (as musubi-tuner would write them for these tensors) and ``hadakron.merge`` (JSON).
The ``sshs_*`` hashes are recomputed for the written tensors when saving (:func:`hashed_for_saving`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..common.hashes import HASH_KEYS, with_hashes
from ..common.tensor_files import PICKLE_SUFFIXES
from ..keymap.resolver import normalise, split_producer_prefix

PRODUCER = f"hadakron {__version__}"
OUTPUT_CONVENTION = "lycoris"
# Keys that describe the old tensors and would now be wrong (the hashes are recomputed on save).
STALE_KEYS = (*HASH_KEYS, "ss_lokr_factor")
# family -> the LoRA network module musubi-tuner (main) trains and loads it with: ``ss_network_module``
# of a LoRA file. The generic ``networks.lora`` targets HunyuanVideo's blocks only (finds nothing on WAN).
LORA_NETWORK_MODULES = {
    "wan": "networks.lora_wan",
    "hunyuan_video": "networks.lora",
    "hunyuan_video_1_5": "networks.lora_hv_1_5",
    "framepack": "networks.lora_framepack",
    "flux": "networks.lora_flux",
    "flux2": "networks.lora_flux_2",
    "qwen_image": "networks.lora_qwen_image",
    "z_image": "networks.lora_zimage",
    "kandinsky5": "networks.lora_kandinsky",
}


def merged_metadata(
    base: dict[str, str], kinds: set[str], ranks: list[int], info: dict, family: str | None = None
) -> dict[str, str]:
    """Metadata for a combined/converted adapter (the hashes are added by :func:`hashed_for_saving`).

    Args:
        base: the first input file's metadata (kept, minus :data:`STALE_KEYS`).
        kinds: algorithms of the written modules (``lora``, ``loha``, ``lokr``, ``diff``).
        ranks: ranks of the written LoRA/LoHa/LoKr modules, all with alpha = rank
            (``ss_network_dim`` = ``ss_network_alpha`` = the largest).
        info: what was merged and how (stored as ``hadakron.merge`` JSON).
        family: the model family of the inputs (picks musubi's LoRA network module), if known.
    """
    meta = {k: str(v) for k, v in base.items() if k not in STALE_KEYS and not k.startswith("hadakron.")}
    meta["hadakron.producer"] = PRODUCER
    meta["hadakron.convention"] = OUTPUT_CONVENTION
    meta["hadakron.merge"] = json.dumps(info, sort_keys=True)
    module = network_module(kinds, base.get("ss_network_module", ""), family)
    if module != base.get("ss_network_module"):
        meta.pop("ss_network_args", None)  # arguments of another network module
    meta["ss_network_module"] = module
    if ranks:
        meta["ss_network_dim"] = str(max(ranks))
        meta["ss_network_alpha"] = str(float(max(ranks)))  # musubi/sd-scripts write the float (``"4.0"``)
    return meta


def network_module(kinds: set[str], base_module: str, family: str | None) -> str:
    """``ss_network_module`` musubi-tuner would record for tensors of these ``kinds``.

    LoRA only: the family's musubi LoRA module; one LyCORIS algorithm: ``networks.loha``/``networks.lokr``
    (or the input's LyCORIS wrapper); anything else (mixed algorithms, full diffs): ``lycoris.kohya``.
    """
    if kinds <= {"lora"}:
        if family in LORA_NETWORK_MODULES:
            return LORA_NETWORK_MODULES[family]
        return base_module if base_module.startswith("networks.lora") else "networks.lora"
    if len(kinds) == 1 and kinds <= {"loha", "lokr"}:
        native = f"networks.{next(iter(kinds))}"
        return base_module if base_module in (native, "lycoris.kohya") else native
    return base_module if base_module.startswith("lycoris.") else "lycoris.kohya"


def hashed_for_saving(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata as written: a safetensors file gets fresh ``sshs_*`` hashes and its tensors in
    safetensors' storage order (data region == hashed bytes); a pickle gets no hashes (sd-scripts writes
    them for safetensors only)."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        return tensors, {k: v for k, v in metadata.items() if k not in HASH_KEYS}
    return with_hashes(tensors, metadata)


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
