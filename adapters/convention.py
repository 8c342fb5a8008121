"""Auto-detection of the producer's alpha convention from keys and metadata (formats.md §7.3)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..common.errors import ConventionError
from .scale import SCALE_CONVENTIONS, module_scale
from .types import ModuleAdapter

CONVENTIONS = ("auto", *SCALE_CONVENTIONS)
PRODUCER_TAG = "hadakron.producer"
CONVENTION_TAG = "hadakron.convention"
PR901_GLOBAL_KEYS = ("lokr_factor", "use_rslora_flag", "use_dora_flag")


@dataclass
class ConventionChoice:
    """The convention to apply and why (shown in load reports)."""

    convention: str
    reason: str
    rslora_flag: bool = False


def detect_convention(
    keys,
    metadata: dict[str, str] | None,
    peft_config: dict | None = None,
    requested: str = "auto",
    global_tensors: dict | None = None,
    adapters: Iterable[ModuleAdapter] | None = None,
) -> ConventionChoice:
    """Pick the convention: an explicit request wins, then HadaKron's own tag, then §7.3's order.

    Args:
        keys: the file's tensor names.
        metadata: safetensors ``__metadata__`` (may be empty).
        peft_config: parsed ``adapter_config.json`` beside the file, if any.
        requested: ``auto`` or a convention name.
        global_tensors: non-module tensors (``use_rslora_flag`` …) for PR #901's flags.
        adapters: the file's parsed modules; when given, markers of several conventions that scale
            some module differently raise (see :func:`check_mixed_conventions`) instead of §7.3 picking one.

    Raises:
        ConventionError: ``auto`` on a file whose markers contradict each other (with ``adapters``).
    """
    metadata = metadata or {}
    rslora = _rslora_flag(global_tensors, peft_config)
    # Under ``lycoris`` the flag means "LyCORIS rs_lora" (see scale.py); only the kohya branch sets it.
    if requested != "auto":
        return ConventionChoice(requested, "chosen explicitly", rslora and requested != "lycoris")
    tagged = metadata.get(CONVENTION_TAG)
    if metadata.get(PRODUCER_TAG) and tagged in SCALE_CONVENTIONS:
        reason = f"written by HadaKron with the {tagged} convention"
        return ConventionChoice(tagged, reason, rslora and tagged != "lycoris")
    keys = list(keys)
    if adapters is not None:
        check_mixed_conventions(adapters, keys, metadata, peft_config, global_tensors)
    if peft_config is not None or any(k.startswith("base_model.model.") for k in keys):
        return ConventionChoice("peft", "PEFT file (adapter_config.json or base_model.model. keys)", rslora)
    if any(k in PR901_GLOBAL_KEYS for k in keys) or "ss_lokr_factor" in metadata:
        return ConventionChoice("musubi_pr901", "musubi PR #901 markers (lokr_factor / flags)", rslora)
    module = metadata.get("ss_network_module", "")
    if module == "lycoris.kohya":
        rs = "rs_lora" in _network_args(metadata) and _truthy(_network_args(metadata).get("rs_lora"))
        return ConventionChoice(
            "lycoris", "LyCORIS kohya network" + (" (rs_lora alpha stored compensated)" if rs else ""), rs
        )
    if module.startswith("networks."):
        return ConventionChoice("lycoris", f"sd-scripts/musubi network {module}")
    return ConventionChoice("lycoris", "default (LyCORIS / ComfyUI / musubi main semantics)")


def marker_conventions(keys, metadata: dict[str, str], peft_config: dict | None = None) -> dict[str, str]:
    """Every convention the file's markers point at (§7.3 steps 1-4), each with the marker that says so.

    One producer writes one consistent set (PR #901, a musubi fork, writes ``networks.*`` with its
    ``lokr_factor``); several entries mean the file mixes producers, e.g. modules with and without the
    PEFT ``base_model.model.`` prefix, or PR #901 markers in a ``lycoris.kohya`` file.
    """
    keys = list(keys)
    found: dict[str, str] = {}
    peft_keys = [k for k in keys if k.startswith("base_model.model.")]
    if peft_config is not None:
        found["peft"] = "adapter_config.json beside the file"
    elif peft_keys:
        found["peft"] = f"base_model.model. keys ({peft_keys[0]})"
    pr901 = [k for k in keys if k in PR901_GLOBAL_KEYS] + [k for k in ("ss_lokr_factor",) if k in metadata]
    if pr901:
        found["musubi_pr901"] = " + ".join(pr901)
    module = metadata.get("ss_network_module", "")
    unprefixed = [k for k in keys if k not in PR901_GLOBAL_KEYS and not k.startswith("base_model.model.")]
    if module == "lycoris.kohya" or (module.startswith("networks.") and not pr901):
        found["lycoris"] = f"ss_network_module {module}"
    elif peft_keys and unprefixed:
        found["lycoris"] = f"keys without the PEFT prefix ({unprefixed[0]})"
    return found


def check_mixed_conventions(
    adapters: Iterable[ModuleAdapter],
    keys,
    metadata: dict[str, str],
    peft_config: dict | None = None,
    global_tensors: dict | None = None,
) -> None:
    """Raise :class:`ConventionError` if the file's markers name several conventions that disagree.

    Markers that agree on every module's scale (e.g. plain LoRA, α/r everywhere) are harmless and
    pass; otherwise no convention can be right for the whole file, so the error names the markers
    and the modules whose scale differs, and the user picks the convention explicitly.
    """
    found = marker_conventions(keys, metadata, peft_config)
    if len(found) < 2:
        return
    flags = {c: _candidate_flag(c, metadata, global_tensors, peft_config) for c in found}
    differing = []
    for adapter in adapters:
        scales = {c: module_scale(adapter, c, flags[c]) for c in found}
        if not all(math.isclose(v, next(iter(scales.values())), rel_tol=1e-6) for v in scales.values()):
            differing.append(f"{adapter.name}: " + ", ".join(f"{c} {v:g}" for c, v in scales.items()))
    if differing:
        markers = "; ".join(f"{marker} -> {c}" for c, marker in found.items())
        raise ConventionError(
            f"mixed scale conventions in one file ({markers}); {len(differing)} module(s) would get different "
            f"scales, e.g. {' | '.join(differing[:3])}; choose the convention explicitly instead of auto"
        )


def _candidate_flag(convention: str, metadata: dict[str, str], global_tensors, peft_config) -> bool:
    if convention == "lycoris":  # LyCORIS rs_lora (stored alpha compensated), as auto-detection reads it
        return metadata.get("ss_network_module") == "lycoris.kohya" and _truthy(_network_args(metadata).get("rs_lora"))
    return _rslora_flag(global_tensors, peft_config)


def _rslora_flag(global_tensors: dict | None, peft_config: dict | None) -> bool:
    if peft_config and peft_config.get("use_rslora"):
        return True
    flag = (global_tensors or {}).get("use_rslora_flag")
    return bool(flag is not None and float(flag.float().reshape(-1)[0]) != 0.0)


def _network_args(metadata: dict[str, str]) -> dict:
    try:
        args = json.loads(metadata.get("ss_network_args", "{}"))
    except json.JSONDecodeError:
        return {}
    return args if isinstance(args, dict) else {}


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")
