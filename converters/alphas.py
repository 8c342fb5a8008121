"""Alphas of converted modules: keep each module's effect exactly, in LyCORIS semantics (formats.md §7).

Every output is read with the ``lycoris`` convention (scale = alpha/rank; full-matrix LoKr = 1; no
alpha = 1), the one ComfyUI 0.3.75, LyCORIS and musubi-tuner share. For each module the scale γ the
*source* convention gives is reproduced by the stored alpha where possible, and folded into the
factors otherwise (full-matrix LoKr with γ ≠ 1, diffusers-style LoRA without alpha, hybrid modules
sharing one alpha). Full-matrix LoKr always gets the portable alpha ``w2.shape[0] // w1.shape[0]``
so every ComfyUI version reads scale 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..adapters import LoKrWeights, ModuleAdapter, module_scale, portable_full_lokr_alpha
from ..adapters.convention import ConventionChoice

RELATIVE_TOLERANCE = 1e-6
# Roles that carry a folded scale: LoRA splits it over up and down (as musubi's "other" target does).
FOLD_ROLES = {"lora": ("up", "down"), "loha": ("w1a",), "lokr": ("w1", "w1a")}


@dataclass
class AlphaPlan:
    """What to write for one module: its alpha (``None``: no alpha key) and a scale folded per algorithm.

    ``keep`` means the file's own alpha tensor is written unchanged.
    """

    alpha: float | None
    keep: bool = False
    folds: dict[str, float] = field(default_factory=dict)
    synthesised: bool = False


def source_gamma(adapter: ModuleAdapter, choice: ConventionChoice) -> float:
    """γ of ``adapter`` under the file's detected (or chosen) convention."""
    return module_scale(adapter, choice.convention, choice.rslora_flag)


def lycoris_gamma(adapter: ModuleAdapter, alpha: float | None) -> float:
    """γ a LyCORIS-convention reader gives ``adapter`` when the file stores ``alpha``."""
    w = adapter.weights
    if w.algo == "full" or alpha is None or (isinstance(w, LoKrWeights) and w.is_full):
        return 1.0
    return alpha / w.rank


def _natural_alpha(adapter: ModuleAdapter, gamma: float) -> float | None:
    w = adapter.weights
    if w.algo == "full":
        return None
    if isinstance(w, LoKrWeights) and w.is_full:
        return portable_full_lokr_alpha(int(w.w1.shape[0]), int(w.w2.shape[0]))
    return gamma * w.rank


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b), 1e-30)


def plan_alpha(adapters: list[ModuleAdapter], choice: ConventionChoice, want_alpha: bool = True) -> AlphaPlan:
    """The alpha (and folds) that keep every adapter of one module at its source scale.

    Args:
        adapters: the module's adapters (several for a hybrid module; they share one alpha).
        choice: the source file's convention.
        want_alpha: ``False`` for diffusers-style LoRA-only modules: no alpha, γ folded into the factors.
    """
    gammas = [source_gamma(a, choice) for a in adapters]
    weighted = [(a, g) for a, g in zip(adapters, gammas, strict=True) if a.weights.algo != "full"]
    if not weighted or not want_alpha:
        return AlphaPlan(None, folds={a.algo: g for a, g in weighted})
    first, gamma = weighted[0]
    natural = _natural_alpha(first, gamma)
    stored = first.alpha
    keep = stored is not None and natural is not None and _close(stored, natural)
    alpha = stored if keep else natural
    plan = AlphaPlan(alpha, keep=keep, synthesised=stored is None)
    for adapter, g in weighted:
        plan.folds[adapter.algo] = g / lycoris_gamma(adapter, alpha) if lycoris_gamma(adapter, alpha) else 1.0
    return plan


def fold_tensor(algo: str, role: str, tensor: torch.Tensor, fold: float) -> torch.Tensor:
    """``tensor`` with its share of the folded scale (unchanged object when there is nothing to fold).

    LoRA: ``√|f|`` on up and down (the sign on up), computed in fp32 like musubi's ``convert_lora.py``.
    LoHa/LoKr: ``f`` on the first factor.
    """
    if _close(fold, 1.0) or role not in FOLD_ROLES.get(algo, ()):
        return tensor
    work = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    if algo == "lora":
        factor = torch.tensor(abs(fold), dtype=torch.float32).sqrt().to(work)
        if role == "up" and fold < 0:
            factor = -factor
    else:
        factor = torch.tensor(fold, dtype=work)
    return (tensor.to(work) * factor).to(tensor.dtype)


def alpha_tensor(value: float) -> torch.Tensor:
    """A 0-d fp32 alpha (the dtype musubi and LyCORIS save)."""
    if not math.isfinite(value):
        raise ValueError(f"alpha {value} is not finite")
    return torch.tensor(float(value), dtype=torch.float32)
