"""File metadata musubi-tuner writes (training.md §7, formats.md §16): ``ss_*``, ``modelspec.*`` and
the ``sshs_*`` hashes (computed last, over the tensors plus the ``ss_*`` keys only), plus HadaKron's
own producer/convention tags so ``auto`` reads its files first.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from .. import __version__
from ..common.hashes import HASH_KEYS, safetensors_hashes
from ..merge.metadata import LORA_NETWORK_MODULES
from .config import ss_network_args

PRODUCER = f"hadakron {__version__}"

# family -> (ss_base_model_version, modelspec.architecture, implementation); the LoRA network module
# comes from merge.metadata.LORA_NETWORK_MODULES (shared with combine/to-lora/resize outputs).
FAMILY_META = {
    "wan": ("wan", "wan2.1/lora", "https://github.com/Wan-Video/Wan2.1"),
    "hunyuan_video": ("hunyuan_video", "hunyuan-video/lora", "https://github.com/Tencent/HunyuanVideo"),
    "hunyuan_video_1_5": (
        "hunyuan_video_1_5",
        "hunyuan-video-1.5/lora",
        "https://github.com/Tencent-Hunyuan/HunyuanVideo-1.5",
    ),
    "flux": ("flux_kontext", "Flux.1-dev/lora", "https://github.com/black-forest-labs/flux"),
    "flux2": ("flux_2_dev", "Flux.2-dev/lora", "https://github.com/black-forest-labs/flux2"),
    "qwen_image": ("qwen_image", "Qwen-Image/lora", "https://github.com/QwenLM/Qwen-Image"),
    "z_image": ("z_image", "Z-Image/lora", "https://github.com/Tongyi-MAI/Z-Image"),
    "kandinsky5": ("kandinsky5", "Kandinsky-5/lora", "https://github.com/ai-forever/Kandinsky-5"),
}


@dataclass
class RunInfo:
    """Per-run facts that are not settings."""

    num_train_items: int = 0
    batches_per_epoch: int = 0
    total_steps: int = 0
    datasets: list = field(default_factory=list)
    model_name: str = ""
    session_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 2**31))
    started_at: float = field(default_factory=time.time)


def network_module(config) -> str:
    """``ss_network_module`` as musubi writes it."""
    if config.algo in ("lokr", "loha"):
        return f"networks.{config.algo}"
    return LORA_NETWORK_MODULES.get(config.family, "networks.lora")


def _mixed_precision(config) -> str:
    return {"bf16": "bf16", "fp16": "fp16"}.get(config.training_dtype, "no")


def _optimizer_text(config) -> str:
    module = "bitsandbytes.optim" if config.optimizer == "AdamW8bit" else f"torch.optim.{config.optimizer.lower()}"
    args = f"weight_decay={config.weight_decay}" + (f" {config.optimizer_args}" if config.optimizer_args else "")
    return f"{module}.{config.optimizer}({args})"


def training_metadata(config, run: RunInfo, step: int, epoch: int) -> dict[str, str]:
    """Every ``ss_*`` musubi writes, for a file saved at ``step``."""
    mode, shift = config.resolved_timesteps()
    base_version = FAMILY_META.get(config.family, (config.family,))[0]
    meta = {
        "ss_session_id": run.session_id,
        "ss_training_started_at": str(run.started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": config.output_name,
        "ss_learning_rate": str(config.learning_rate),
        "ss_num_train_items": str(run.num_train_items),
        "ss_num_batches_per_epoch": str(run.batches_per_epoch),
        "ss_num_epochs": str(
            config.epochs or max(1, -(-run.total_steps * config.grad_accum // max(1, run.batches_per_epoch)))
        ),
        "ss_gradient_checkpointing": str(bool(config.gradient_checkpointing)),
        "ss_gradient_accumulation_steps": str(config.grad_accum),
        "ss_max_train_steps": str(run.total_steps),
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_network_module": network_module(config),
        "ss_network_dim": str(config.network_dim),
        "ss_network_alpha": str(config.network_alpha),
        "ss_network_dropout": str(config.dropout),
        "ss_network_args": json.dumps(ss_network_args(config)),
        "ss_mixed_precision": _mixed_precision(config),
        "ss_seed": str(config.seed),
        "ss_training_comment": "trained in ComfyUI with HadaKron",
        "ss_optimizer": _optimizer_text(config),
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_fp8_base": "False",
        "ss_full_fp16": "False",
        "ss_full_bf16": "False",
        "ss_weighting_scheme": config.weighting_scheme,
        "ss_logit_mean": str(config.logit_mean),
        "ss_logit_std": str(config.logit_std),
        "ss_mode_scale": str(config.mode_scale),
        "ss_guidance_scale": "1.0",
        "ss_timestep_sampling": mode,
        "ss_sigmoid_scale": str(config.sigmoid_scale),
        "ss_discrete_flow_shift": str(shift),
        "ss_datasets": json.dumps(run.datasets),
        "ss_sd_model_name": run.model_name,
        "ss_vae_name": "",
        "ss_base_model_version": base_version,
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
    }
    if config.algo == "lokr":
        meta["ss_lokr_factor"] = str(int(config.factor))
    return meta


def modelspec_metadata(config) -> dict[str, str]:
    """SAI model spec keys (LoHa/LoKr use ``/lora`` too)."""
    _, arch, impl = FAMILY_META.get(config.family, ("", f"{config.family}/lora", ""))
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": impl,
        "modelspec.title": config.output_name,
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if config.min_timestep > 0 or config.max_timestep < 1000:
        meta["modelspec.timestep_range"] = f"{int(config.min_timestep)},{int(config.max_timestep)}"
    return meta


def file_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` / ``sshs_legacy_hash`` over ``(tensors, ss_* metadata)`` (:mod:`common.hashes`)."""
    return dict(zip(HASH_KEYS, safetensors_hashes(tensors, metadata), strict=True))


def full_metadata(config, run: RunInfo, step: int, epoch: int, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Producer tags, ``ss_*``, ``modelspec.*`` and the hashes (computed last)."""
    meta = {"hadakron.producer": PRODUCER, "hadakron.convention": "lycoris", "hadakron.key_format": config.key_format}
    meta.update(training_metadata(config, run, step, epoch))
    meta.update(modelspec_metadata(config))
    meta.update(file_hashes(tensors, meta))
    return meta
