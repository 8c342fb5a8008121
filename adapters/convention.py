"""Auto-detection of the producer's alpha convention from keys and metadata (formats.md §7.3)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .scale import SCALE_CONVENTIONS

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
) -> ConventionChoice:
    """Pick the convention: an explicit request wins, then HadaKron's own tag, then §7.3's order.

    Args:
        keys: the file's tensor names.
        metadata: safetensors ``__metadata__`` (may be empty).
        peft_config: parsed ``adapter_config.json`` beside the file, if any.
        requested: ``auto`` or a convention name.
        global_tensors: non-module tensors (``use_rslora_flag`` …) for PR #901's flags.
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
