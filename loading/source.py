"""Read an adapter file (and a PEFT ``adapter_config.json`` beside it) into a parsed adapter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..adapters import ConventionChoice, ParsedAdapter, detect_convention, parse_adapter_state_dict
from ..common.errors import AdapterFileError, HadaKronError
from ..common.tensor_files import load_tensor_file


@dataclass
class AdapterSource:
    """A parsed adapter file with its detected convention and producer."""

    path: str
    parsed: ParsedAdapter
    convention: ConventionChoice
    producer: str
    peft_config: dict | None = None


def read_adapter(path: str | Path, convention: str = "auto", allow_nonfinite: bool = False) -> AdapterSource:
    """Load, validate and classify one adapter file.

    Raises:
        HadaKronError: with the file's path for every problem (corrupt file, bad module ...).
    """
    path = Path(path)
    tensors, metadata = load_tensor_file(path)
    peft_config = _peft_config_beside(path)
    try:
        parsed = parse_adapter_state_dict(tensors, metadata, peft_config, allow_nonfinite=allow_nonfinite)
        choice = detect_convention(
            tensors.keys(), metadata, peft_config, convention, parsed.globals, adapters=list(parsed.adapters())
        )
    except HadaKronError as exc:
        raise exc.with_path(str(path)) from None
    if not parsed.modules:
        raise AdapterFileError("no LoRA/LoHa/LoKr/diff modules found (not an adapter file?)", path=str(path))
    return AdapterSource(str(path), parsed, choice, detect_producer(tensors.keys(), metadata, peft_config), peft_config)


def _peft_config_beside(path: Path) -> dict | None:
    candidate = path.parent / "adapter_config.json"
    if not candidate.is_file():
        return None
    try:
        config = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"adapter_config.json is not valid JSON ({exc})", path=str(candidate)) from exc
    if not isinstance(config, dict):
        raise AdapterFileError("adapter_config.json is not a JSON object", path=str(candidate))
    return config


def detect_producer(keys, metadata: dict[str, str], peft_config: dict | None) -> str:
    """A human-readable guess of which tool wrote the file (for the load report)."""
    keys = list(keys)
    first = keys[0] if keys else ""
    if metadata.get("hadakron.producer"):
        return metadata["hadakron.producer"]
    if peft_config is not None or first.startswith("base_model.model."):
        return "PEFT"
    if any(k in ("lokr_factor", "use_rslora_flag", "use_dora_flag") for k in keys):
        return "musubi-tuner PR #901"
    module = metadata.get("ss_network_module", "")
    if module == "lycoris.kohya":
        return "LyCORIS (kohya wrapper)"
    if module.startswith("networks."):
        return f"musubi-tuner / sd-scripts ({module})"
    if "software" in metadata and "ai-toolkit" in metadata.get("software", ""):
        return "ai-toolkit"
    if metadata.get("format") == "pt":
        return "diffusion-pipe / ai-toolkit (format: pt)"
    return _producer_from_prefix(first)


def _producer_from_prefix(first: str) -> str:
    for prefix, name in (
        ("lycoris_", "LyCORIS / SimpleTuner (lycoris_ prefix)"),
        ("lora_transformer_", "OneTrainer"),
        ("lora_unet_", "sd-scripts style (lora_unet_)"),
        ("diffusion_model.", "ComfyUI / ai-toolkit / musubi 'other' (diffusion_model.)"),
        ("transformer.", "diffusers (transformer.)"),
    ):
        if first.startswith(prefix):
            return name
    return "unknown (bare module names)"
