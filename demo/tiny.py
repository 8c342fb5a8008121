"""Tiny real ComfyUI models for CPU tests (architectures.md §9).

Every function here needs ComfyUI loaded in-process: request the ``comfy`` fixture first.
Weights are deterministic (seeded) and scaled like a fan-in init so sampling stays finite.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from demo import runtime as comfy_runtime

# family -> (comfy.supported_models class name, unet_config). Recipe A: no detection involved.
_TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "wan21": (
        "WAN21_T2V",
        dict(
            image_model="wan2.1",
            model_type="t2v",
            dim=128,
            ffn_dim=256,
            num_heads=1,
            num_layers=2,
            in_dim=16,
            out_dim=16,
            text_dim=64,
            freq_dim=256,
            patch_size=(1, 2, 2),
            window_size=(-1, -1),
            qk_norm=True,
            cross_attn_norm=True,
            eps=1e-6,
        ),
    ),
    "flux1": (
        "Flux",
        dict(
            image_model="flux",
            guidance_embed=True,
            in_channels=16,
            out_channels=16,
            vec_in_dim=32,
            context_in_dim=64,
            hidden_size=128,
            mlp_ratio=4.0,
            num_heads=1,
            depth=1,
            depth_single_blocks=1,
            axes_dim=[16, 56, 56],
            theta=10000,
            patch_size=2,
            qkv_bias=True,
        ),
    ),
    "flux2": (
        "Flux2",
        dict(
            image_model="flux2",
            in_channels=128,
            out_channels=128,
            vec_in_dim=None,
            context_in_dim=64,
            hidden_size=128,
            mlp_ratio=3.0,
            num_heads=1,
            depth=1,
            depth_single_blocks=1,
            axes_dim=[32, 32, 32, 32],
            theta=2000,
            patch_size=1,
            qkv_bias=False,
            global_modulation=True,
            mlp_silu_act=True,
            ops_bias=False,
            default_ref_method="index",
            ref_index_scale=10,
            guidance_embed=False,
        ),
    ),
    "hunyuan_video": (
        "HunyuanVideo",
        dict(
            image_model="hunyuan_video",
            in_channels=16,
            out_channels=16,
            vec_in_dim=32,
            context_in_dim=64,
            hidden_size=128,
            mlp_ratio=4.0,
            num_heads=1,
            depth=1,
            depth_single_blocks=1,
            axes_dim=[16, 56, 56],
            theta=256,
            patch_size=[1, 2, 2],
            qkv_bias=True,
            guidance_embed=True,
            byt5=False,
            meanflow=False,
            use_cond_type_embedding=False,
            vision_in_dim=None,
            meanflow_sum=False,
        ),
    ),
    "hunyuan_video15": (
        "HunyuanVideo15",
        dict(
            image_model="hunyuan_video",
            in_channels=65,
            out_channels=32,
            vec_in_dim=None,
            context_in_dim=64,
            hidden_size=128,
            mlp_ratio=4.0,
            num_heads=1,
            depth=1,
            depth_single_blocks=0,
            axes_dim=[16, 56, 56],
            theta=256,
            patch_size=[1, 1, 1],
            qkv_bias=True,
            guidance_embed=False,
            byt5=True,
            meanflow=False,
            use_cond_type_embedding=True,
            vision_in_dim=1152,
            meanflow_sum=True,
        ),
    ),
    "zimage": (
        "Lumina2",
        dict(
            image_model="lumina2",
            patch_size=2,
            in_channels=16,
            dim=128,
            cap_feat_dim=64,
            n_layers=1,
            n_refiner_layers=1,
            n_heads=1,
            n_kv_heads=1,
            qk_norm=True,
            axes_dims=[32, 48, 48],
            axes_lens=[64, 64, 64],
            rope_theta=256,
            ffn_dim_multiplier=8.0 / 3.0,
            z_image_modulation=True,
            time_scale=1000,
            pad_tokens_multiple=32,
        ),
    ),
    "qwen_image": (
        "QwenImage",
        dict(
            image_model="qwen_image",
            in_channels=64,
            out_channels=16,
            num_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=64,
            patch_size=2,
            axes_dims_rope=(8, 12, 12),
        ),
    ),
}

FAMILIES: tuple[str, ...] = tuple(_TINY_CONFIGS)

# The detectable WAN 2.1 file (Recipe B): detection fixes num_heads = dim // 128, text_dim 4096, freq_dim 256.
TINY_WAN_FILE_CONFIG = {**_TINY_CONFIGS["wan21"][1], "num_layers": 1, "text_dim": 4096}
TINY_WAN_TEXT_DIM = 4096


def _drop_newer_keys(cfg: dict) -> dict:
    """Adapt a config to this ComfyUI: drop keys it does not know (``meanflow_sum`` exists from 0.33 on)
    and add ones newer releases require (FLUX's ``txt_ids_dims`` from 0.33 on)."""
    if "meanflow_sum" in cfg:
        from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

        if "meanflow_sum" not in HunyuanVideoParams.__dataclass_fields__:
            cfg.pop("meanflow_sum")
    if cfg.get("image_model") in ("flux", "flux2"):
        from comfy.ldm.flux.model import FluxParams

        if "txt_ids_dims" in FluxParams.__dataclass_fields__:
            cfg.setdefault("txt_ids_dims", [])
    return cfg


def tiny_config(family: str) -> tuple[str, dict]:
    """``(supported_models class name, unet_config copy)`` for a family in ``FAMILIES``."""
    try:
        cls_name, cfg = _TINY_CONFIGS[family]
    except KeyError:
        raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}") from None
    return cls_name, dict(cfg)


def _is_norm_scale(name: str, tensor: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("gamma", "scale") or (tensor.ndim == 1 and leaf == "weight" and "norm" in name)


@torch.no_grad()
def fill_deterministic(module: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter in place with seeded values (ComfyUI ops leave them as ``torch.empty``).

    Matrices/kernels get N(0, 1/fan_in); norm scales 1 + N(0, 0.01); other vectors (biases) N(0, 0.01).
    The result depends only on ``seed`` and the parameter names/shapes, not on creation order.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if _is_norm_scale(name, param):
            values = 1.0 + 0.01 * values
        elif param.ndim >= 2:
            values *= 1.0 / math.sqrt(max(1, param[0].numel()))
        else:
            values *= 0.01
        param.copy_(values.to(param.dtype))


def _build_model(cls_name: str, cfg: dict, seed: int):
    import comfy.supported_models

    comfy_runtime.get_runtime()
    model_config = getattr(comfy.supported_models, cls_name)(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    fill_deterministic(model.diffusion_model, seed)
    model.eval()
    return model


def build_tiny(family: str, seed: int = 0):
    """A tiny real ComfyUI model of ``family`` (see ``FAMILIES``) wrapped in a CPU fp32 ``ModelPatcher``.

    Args:
        family: one of ``wan21, flux1, flux2, hunyuan_video, hunyuan_video15, zimage, qwen_image``.
        seed: weight seed; the same seed gives identical weights.

    Returns:
        ``comfy.model_patcher.ModelPatcher`` with load and offload device CPU.
    """
    import comfy.model_patcher

    cls_name, cfg = tiny_config(family)
    model = _build_model(cls_name, _drop_newer_keys(cfg), seed)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_wan_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """State dict of a detectable tiny WAN 2.1 T2V model (dim 128, 1 layer), keys without ``diffusion_model.``."""
    model = _build_model("WAN21_T2V", dict(TINY_WAN_FILE_CONFIG), seed)
    return {k: v.detach().to(dtype).contiguous() for k, v in model.diffusion_model.state_dict().items()}


def write_tiny_wan_file(path: Path | str, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a tiny WAN 2.1 diffusion model that ``UNETLoader``/``comfy.sd.load_diffusion_model`` detects.

    Put it in ``<base>/models/diffusion_models/``. Pair with conditioning ``[[randn(1, L, 4096), {}]]``
    and ``EmptyHunyuanLatentVideo`` latents (16 channels). ~0.9 M parameters (1.8 MB in bf16).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_wan_state_dict(seed, dtype), str(path))
    return path


def write_tiny_wan_vae(path: Path | str, seed: int = 0) -> Path:
    """Save a tiny WAN 2.1 VAE (dim 8, z 16, fp32, ~3.7 MB) that ``VAELoader``/``comfy.sd.VAE`` detects.

    A 64x64 image encodes to a ``[1, 16, 1, 8, 8]`` latent and decodes back to ``[1, 1, 64, 64, 3]``.
    """
    import comfy.ldm.wan.vae

    comfy_runtime.get_runtime()
    vae = comfy.ldm.wan.vae.WanVAE(
        dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    fill_deterministic(vae, seed)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in vae.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
