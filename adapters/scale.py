"""Scale γ of one module under each producer's alpha convention (formats.md §7).

| convention     | LoRA / LoHa / low-rank LoKr | LoKr, both factors full | no alpha |
|----------------|-----------------------------|-------------------------|----------|
| ``lycoris``    | α/r                         | 1                       | α = r    |
| ``peft``       | α/r (α, r from the config)  | α/r                     | α = r    |
| ``musubi_pr901``| α/r (α/√r with the rsLoRA flag) | α / max(w2.shape)   | α = r    |
| ``rs_lora``    | α/√r                        | 1                       | α = r    |
"""

from __future__ import annotations

import math

from ..common.errors import ConventionError
from .types import LoKrWeights, ModuleAdapter

SCALE_CONVENTIONS = ("lycoris", "peft", "musubi_pr901", "rs_lora")


def module_scale(adapter: ModuleAdapter, convention: str = "lycoris", rslora_flag: bool = False) -> float:
    """Return γ for ``adapter`` under ``convention``.

    Args:
        adapter: a parsed module.
        convention: one of :data:`SCALE_CONVENTIONS` (``auto`` must be resolved first).
        rslora_flag: PR #901's ``use_rslora_flag`` / PEFT ``use_rslora`` (LoRA: α/√r); under ``lycoris``,
            a LyCORIS kohya ``rs_lora`` network (stored α compensated; full-matrix LoKr γ = α^(1/3)).
    """
    if convention not in SCALE_CONVENTIONS:
        raise ConventionError(f"unknown scale convention {convention!r}; use one of {', '.join(SCALE_CONVENTIONS)}")
    w = adapter.weights
    if w.algo == "full":
        return 1.0
    rank = adapter.nominal_rank or w.rank
    alpha = adapter.nominal_alpha if adapter.nominal_alpha is not None else adapter.alpha
    if isinstance(w, LoKrWeights) and w.is_full:
        return _full_lokr_scale(w, alpha, adapter.nominal_rank, convention, rslora_flag)
    if alpha is None:
        return 1.0
    if convention == "rs_lora" or (rslora_flag and w.algo == "lora" and convention in ("peft", "musubi_pr901")):
        return alpha / math.sqrt(rank)
    return alpha / rank


def _full_lokr_scale(
    w: LoKrWeights, alpha: float | None, nominal_rank: int | None, convention: str, rslora_flag: bool = False
) -> float:
    if alpha is None:
        return 1.0
    if convention == "musubi_pr901":
        return alpha / max(w.w2.shape)
    if convention == "peft" and nominal_rank:
        return alpha / nominal_rank
    if convention == "lycoris" and rslora_flag:
        # LyCORIS rs_lora forces α := dim d and trains at γ = d/√d = √d, storing α·d/√d = d^1.5.
        return alpha ** (1.0 / 3.0)
    return 1.0


def portable_full_lokr_alpha(w1_rows: int, w2_rows: int) -> float:
    """Alpha to store for full-matrix LoKr so every ComfyUI version reads scale 1 (formats.md §7.1)."""
    return float(max(1, w2_rows // max(w1_rows, 1)))
