"""Parse an adapter state dict into typed per-module adapters, validating every tensor."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..common.errors import AdapterFormatError, NonFiniteTensorError
from .keys import GLOBAL_KEYS, split_key
from .types import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights, ModuleAdapter

# Application order when one module carries several families (the seed's order).
FAMILY_ORDER = ("loha", "lokr", "lora", "full")


@dataclass
class ParsedAdapter:
    """A whole adapter file, parsed.

    Attributes:
        modules: module name (as in the file, without role suffix) -> adapters in application order.
        globals: non-module tensors (``lokr_factor``, ``use_rslora_flag``, ``use_dora_flag``).
        unknown_keys: keys that belong to no known role (reported, not applied).
        metadata: the file's string metadata.
    """

    modules: dict[str, list[ModuleAdapter]] = field(default_factory=dict)
    globals: dict[str, torch.Tensor] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def algo_counts(self) -> dict[str, int]:
        """How many modules use each algorithm (a hybrid module counts once per algorithm)."""
        return dict(Counter(a.algo for adapters in self.modules.values() for a in adapters))

    def adapters(self):
        """All module adapters in file order."""
        for adapters in self.modules.values():
            yield from adapters

    def persisted_factor(self) -> tuple[int | None, int | None]:
        """``(buffer, metadata)`` LoKr factors persisted by musubi PR #901 (``None`` when absent)."""
        buffer = self.globals.get("lokr_factor")
        buf = int(round(float(buffer.reshape(-1)[0]))) if buffer is not None and buffer.numel() else None
        meta = self.metadata.get("ss_lokr_factor")
        try:
            meta_val = int(meta) if meta is not None else None
        except ValueError:
            meta_val = None
        return buf, meta_val


def parse_adapter_state_dict(
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    peft_config: dict | None = None,
    allow_nonfinite: bool = False,
) -> ParsedAdapter:
    """Group keys by module and build typed adapters.

    Args:
        state_dict: tensors of one adapter file.
        metadata: its metadata.
        peft_config: ``adapter_config.json`` contents for PEFT files (r/alpha and their patterns).
        allow_nonfinite: accept NaN/Inf tensors (refused by default).

    Raises:
        AdapterFormatError: two spellings of one tensor, missing partners, shapes that do not fit,
            non-float weights, empty tensors; :class:`NonFiniteTensorError` for NaN/Inf.
    """
    parsed = ParsedAdapter(metadata=dict(metadata or {}))
    # One fused finiteness check for the whole file; the per-tensor check runs only if it fails.
    check_each = not allow_nonfinite and not _all_finite(state_dict.values())
    groups: dict[str, dict[str, dict[str, tuple[str, torch.Tensor]]]] = {}
    for key, tensor in state_dict.items():
        if key in GLOBAL_KEYS:
            parsed.globals[key] = tensor
            continue
        split = split_key(key)
        if split is None:
            parsed.unknown_keys.append(key)
            continue
        module, family, role = split
        roles = groups.setdefault(module, {}).setdefault(family, {})
        if role in roles:
            raise AdapterFormatError(
                f"module {module!r} has the same tensor under two spellings: {roles[role][0]!r} and {key!r}"
            )
        roles[role] = (key, tensor)
    for module, families in groups.items():
        built = _build_module(module, families, peft_config, not check_each)
        if built:
            parsed.modules[module] = built
        else:
            parsed.unknown_keys.extend(key for roles in families.values() for key, _ in roles.values())
    return parsed


def _build_module(module: str, families: dict, peft_config: dict | None, allow_nonfinite: bool) -> list[ModuleAdapter]:
    common = {role: _checked(module, key, t, allow_nonfinite) for role, (key, t) in families.get("common", {}).items()}
    common_keys = [key for key, _ in families.get("common", {}).values()]
    alpha = _alpha(module, common.get("alpha"))
    nominal_rank, nominal_alpha = _peft_rank_alpha(peft_config, module)
    adapters = []
    for family in FAMILY_ORDER:
        if family not in families:
            continue
        tensors = {role: _checked(module, key, t, allow_nonfinite) for role, (key, t) in families[family].items()}
        keys = [key for key, _ in families[family].values()]
        for weights in _BUILDERS[family](module, tensors):
            adapters.append(
                ModuleAdapter(
                    name=module,
                    weights=weights,
                    alpha=alpha,
                    keys=keys + common_keys,
                    dora_scale=common.get("dora_scale", common.get("magnitude")),
                    dora_kind="peft" if "magnitude" in common else "lycoris",
                    nominal_rank=nominal_rank,
                    nominal_alpha=nominal_alpha,
                )
            )
    return adapters


def _checked(module: str, key: str, tensor: torch.Tensor, allow_nonfinite: bool) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise AdapterFormatError(f"{key!r} is not a tensor")
    if key.endswith(".alpha") and tensor.dtype != torch.bool and not tensor.is_floating_point():
        tensor = tensor.float()  # musubi's convert_lora.py --target default writes LoRA alpha as int64
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or key.endswith("lokr_factor")):
        raise AdapterFormatError(f"{key!r} has dtype {tensor.dtype}; adapter weights must be floating point")
    if tensor.numel() == 0:
        raise AdapterFormatError(f"{key!r} is empty (shape {tuple(tensor.shape)})")
    if tensor.is_floating_point() and tensor.element_size() == 1:
        tensor = tensor.float()  # fp8 adapter tensors: compute in fp32
    if not allow_nonfinite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteTensorError(f"module {module!r}: {key!r} contains NaN or Inf values")
    return tensor


def _alpha(module: str, tensor: torch.Tensor | None) -> float | None:
    if tensor is None:
        return None
    if tensor.numel() != 1:
        raise AdapterFormatError(f"module {module!r}: alpha must be a scalar, got shape {tuple(tensor.shape)}")
    return float(tensor.item())


def _all_finite(tensors) -> bool:
    """True if no floating tensor holds NaN/Inf (a cheap screen; ``False`` may be a false alarm).

    Tensors viewing one buffer (as the safetensors reader returns them) are screened with one pass
    over that buffer read as their main dtype (other bytes in it can only cause false alarms); the
    rest get one reduction each (a NaN/Inf makes the sum non-finite; an overflowing sum only causes a
    false alarm). The exact per-tensor check then runs only when this returns ``False``.
    """
    floats = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    shared = _shared_buffer_view(floats)
    if shared is not None:
        if not bool(torch.isfinite(shared.sum(dtype=torch.float32))):
            return False
        floats = [t for t in floats if t.dtype != shared.dtype]
    sums = [(t.float() if t.element_size() == 1 else t).sum(dtype=torch.float32) for t in floats]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def _shared_buffer_view(floats: list[torch.Tensor]) -> torch.Tensor | None:
    """The whole buffer behind ``floats`` read as their commonest dtype, if they all share one CPU buffer."""
    if len(floats) < 2 or floats[0].device.type != "cpu":
        return None
    storage = floats[0].untyped_storage()
    if any(t.untyped_storage().data_ptr() != storage.data_ptr() for t in floats):
        return None
    dtype = max({t.dtype for t in floats}, key=lambda d: sum(t.numel() for t in floats if t.dtype == d))
    itemsize = torch.empty((), dtype=dtype).element_size()
    if itemsize == 1:
        return None
    raw = torch.empty(0, dtype=torch.uint8).set_(storage)
    return raw[: raw.numel() - raw.numel() % itemsize].view(dtype)


def _need(module: str, tensors: dict, roles: tuple[str, ...], algo: str) -> None:
    missing = [r for r in roles if r not in tensors]
    if missing:
        raise AdapterFormatError(f"module {module!r}: {algo} is missing {', '.join(missing)}")


def _fits(module: str, ok: bool, what: str) -> None:
    if not ok:
        raise AdapterFormatError(f"module {module!r}: {what}")


def _build_lora(module: str, t: dict) -> list[LoRAWeights]:
    _need(module, t, ("up", "down"), "LoRA")
    up, down, mid = t["up"], t["down"], t.get("mid")
    _fits(module, up.dim() >= 2 and down.dim() >= 2, "LoRA up/down must be at least 2-D")
    rank = down.shape[0]
    if mid is None:
        _fits(module, up.shape[1] == rank, f"LoRA up {tuple(up.shape)} and down {tuple(down.shape)} ranks differ")
    else:
        _fits(
            module,
            mid.shape[0] == up.shape[1] and mid.shape[1] == rank,
            f"LoRA mid {tuple(mid.shape)} does not fit up {tuple(up.shape)} / down {tuple(down.shape)}",
        )
    return [LoRAWeights(up=up, down=down, mid=mid)]


def _build_loha(module: str, t: dict) -> list[LoHaWeights]:
    _need(module, t, ("w1a", "w1b", "w2a", "w2b"), "LoHa")
    w = LoHaWeights(w1a=t["w1a"], w1b=t["w1b"], w2a=t["w2a"], w2b=t["w2b"], t1=t.get("t1"), t2=t.get("t2"))
    _fits(module, (w.t1 is None) == (w.t2 is None), "LoHa Tucker needs both hada_t1 and hada_t2")
    if w.t1 is None:
        _fits(module, w.w1a.shape[1] == w.w1b.shape[0] and w.w2a.shape[1] == w.w2b.shape[0], "LoHa a/b ranks differ")
        _fits(
            module,
            w.w1a.shape[0] == w.w2a.shape[0] and w.w1b.flatten(1).shape[1] == w.w2b.flatten(1).shape[1],
            "LoHa halves have different shapes",
        )
    else:
        _fits(
            module,
            w.t1.shape[:2] == (w.w1a.shape[0], w.w1b.shape[0]) and w.t2.shape[:2] == (w.w2a.shape[0], w.w2b.shape[0]),
            "LoHa Tucker cores do not fit their factors",
        )
    return [w]


def _build_lokr(module: str, t: dict) -> list[LoKrWeights]:
    has_w1 = "w1" in t or ("w1a" in t and "w1b" in t)
    has_w2 = "w2" in t or ("w2a" in t and "w2b" in t)
    _fits(
        module,
        has_w1 and has_w2,
        "LoKr needs lokr_w1 (or lokr_w1_a + lokr_w1_b) and lokr_w2 (or lokr_w2_a + lokr_w2_b)",
    )
    w = LoKrWeights(
        w1=t.get("w1"),
        w1a=t.get("w1a"),
        w1b=t.get("w1b"),
        w2=t.get("w2"),
        w2a=t.get("w2a"),
        w2b=t.get("w2b"),
        t2=t.get("t2"),
    )
    if w.w1 is not None:
        w.w1a = w.w1b = None
    else:
        _fits(module, w.w1a.shape[1] == w.w1b.shape[0], "LoKr w1_a/w1_b ranks differ")
    if w.w2 is not None:
        w.w2a = w.w2b = w.t2 = None
    elif w.t2 is None:
        _fits(module, w.w2a.shape[1] == w.w2b.shape[0], "LoKr w2_a/w2_b ranks differ")
    else:
        _fits(module, w.t2.shape[:2] == (w.w2a.shape[0], w.w2b.shape[0]), "LoKr Tucker core does not fit w2_a/w2_b")
    return [w]


def _build_full(module: str, t: dict) -> list[FullWeights]:
    out = []
    for role, kind, on_bias in (
        ("diff", "diff", False),
        ("w_norm", "diff", False),
        ("set", "set", False),
        ("diff_b", "diff", True),
        ("b_norm", "diff", True),
    ):
        if role in t:
            out.append(FullWeights(tensor=t[role], kind=kind, on_bias=on_bias))
    return out


_BUILDERS = {"lora": _build_lora, "loha": _build_loha, "lokr": _build_lokr, "full": _build_full}


def _peft_rank_alpha(config: dict | None, module: str) -> tuple[int | None, float | None]:
    """PEFT r/alpha for a module, honouring ``rank_pattern``/``alpha_pattern`` (suffix regexes)."""
    if not config:
        return None, None
    rank = config.get("r")
    alpha = config.get("alpha", config.get("lora_alpha"))
    dotted = module.replace("base_model.model.", "", 1)
    rank = _pattern_value(config.get("rank_pattern") or {}, dotted, rank)
    alpha = _pattern_value(config.get("alpha_pattern") or {}, dotted, alpha)
    return (int(rank) if rank else None), (float(alpha) if alpha is not None else None)


def _pattern_value(patterns: dict, name: str, default):
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default
