"""Optional LyCORIS backend: compute ΔW with the ``lycoris-lora`` library's functional API.

Used when the user asks for ``prefer_lycoris``. LyCORIS 4.1.3's module-level ``merge_to`` and
``get_diff_weight`` apply alpha/rank twice for LoHa/LoKr, so only the functional API is used,
with gamma chosen so it returns the *unscaled* ΔW; HadaKron applies the producer's scale itself.
"""

from __future__ import annotations

import os

import torch

from ..common.errors import OptionalDependencyError
from .types import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights


def _functional():
    os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")
    try:
        from lycoris.functional import locon, loha, lokr
    except ImportError as exc:
        raise OptionalDependencyError(
            "prefer_lycoris needs the 'lycoris-lora' package (pip install "
            "lycoris-lora==4.1.3) in ComfyUI's Python environment"
        ) from exc
    return locon, loha, lokr


def lycoris_delta(weights, shape: tuple[int, ...]) -> torch.Tensor:
    """Unscaled ΔW of ``weights`` computed by LyCORIS, reshaped to ``shape``."""
    locon, loha, lokr = _functional()
    if isinstance(weights, LoRAWeights):
        result = locon.diff_weight(weights.down, weights.up, weights.mid, gamma=1.0, backend="torch")
    elif isinstance(weights, LoHaWeights):
        b1, b2 = weights.w1b, weights.w2b
        if weights.t1 is None and len(shape) > 2:
            b1, b2 = b1.reshape(b1.shape[0], *shape[1:]), b2.reshape(b2.shape[0], *shape[1:])
        result = loha.diff_weight(
            b1, weights.w1a, b2, weights.w2a, weights.t1, weights.t2, gamma=torch.tensor(1.0), backend="torch"
        )
    elif isinstance(weights, LoKrWeights):
        result = _lokr(lokr, weights, shape)
    elif isinstance(weights, FullWeights):
        return weights.delta(shape)
    else:
        raise TypeError(type(weights))
    return result.reshape(shape)


def _lokr(lokr, w: LoKrWeights, shape: tuple[int, ...]) -> torch.Tensor:
    w2b = w.w2b
    if w2b is not None and w.t2 is None and len(shape) > 2:
        in_n = shape[1] // w.w1_shape()[1]
        w2b = w2b.reshape(w2b.shape[0], in_n, *shape[2:])
    return lokr.kron_weight(w.w1, w.w1a, w.w1b, w.w2, w.w2a, w2b, w.t2, scale=1.0, backend="torch")
