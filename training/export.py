"""Save a LORA_MODEL state dict (from HadaKron's or ComfyUI's trainer) in a chosen key format with
musubi metadata: key renaming, algorithm/rank/alpha/factor detection from the tensors.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..adapters import LoKrWeights
from ..adapters.keys import KOHYA_SUFFIX, split_key
from ..loading.shapes import implied_lokr_factor
from .targets import musubi_names

_COMFY_PREFIX = "diffusion_model."


def _dotted(module: str) -> str:
    for prefix in (_COMFY_PREFIX, "lora_unet_"):
        if module.startswith(prefix):
            return module[len(prefix) :]
    return module


def rename_module(module: str, family: str | None, key_format: str) -> str:
    """A LORA_MODEL module name in ``musubi`` (``lora_unet_``) or ``comfy`` (``diffusion_model.``) form."""
    dotted = _dotted(module)
    if key_format == "comfy":
        return _COMFY_PREFIX + dotted
    names = musubi_names(family, dotted) if family else (dotted,)
    name = names[0] if len(names) == 1 else dotted
    return "lora_unet_" + name.replace(".", "_")


def convert_state_dict(tensors: dict[str, torch.Tensor], family: str | None, key_format: str, dtype) -> dict:
    """Rename every ``<module><role>`` key; float tensors cast to ``dtype`` (``lokr_factor`` stays int64)."""
    out = {}
    for key, tensor in tensors.items():
        parts = split_key(key)
        if parts is None:
            out[key] = tensor.detach().cpu()
            continue
        module, fam, role = parts
        new_key = rename_module(module, family, key_format) + KOHYA_SUFFIX.get((fam, role), key[len(module) :])
        value = tensor.detach().cpu()
        out[new_key] = value.to(dtype) if value.is_floating_point() else value
    return out


def describe(tensors: dict[str, torch.Tensor]) -> dict:
    """``algo``, ``network_dim``, ``network_alpha`` and LoKr ``factor`` read from the tensors."""
    algos: Counter = Counter()
    ranks: Counter = Counter()
    alphas: Counter = Counter()
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        parts = split_key(key)
        if parts is None:
            continue
        module, fam, role = parts
        if fam in ("lora", "loha", "lokr"):
            algos[fam] += 1
            modules.setdefault(module, {})[role] = tensor
        if role == "alpha":
            alphas[float(tensor.float().reshape(-1)[0])] += 1
        if role in ("down", "w1b", "w2b"):
            ranks[int(tensor.shape[0])] += 1
    algo = algos.most_common(1)[0][0] if algos else "lora"
    return {
        "algo": algo,
        "network_dim": ranks.most_common(1)[0][0] if ranks else 1,
        "network_alpha": alphas.most_common(1)[0][0] if alphas else 1.0,
        "factor": _lokr_factor(modules) if algo == "lokr" else -1,
    }


def _lokr_factor(modules: dict[str, dict[str, torch.Tensor]]) -> int:
    votes: Counter = Counter()
    for roles in modules.values():
        fields = {k: roles.get(k) for k in ("w1", "w1a", "w1b", "w2", "w2a", "w2b")}
        if fields["w1"] is None and fields["w1a"] is None:
            continue
        w = LoKrWeights(**fields)
        out_dim, in_dim = w.out_in()
        if in_dim is None or w.w2 is None and w.w2b is None:
            continue
        votes[implied_lokr_factor(w, (out_dim, in_dim))] += 1
    for value, _ in votes.most_common():
        if value.lstrip("-").isdigit():
            return int(value)
    return -1
