"""What HadaKron needs to know about a live ComfyUI model: parameter shapes, family, key aliases."""

from __future__ import annotations

import logging

import comfy.lora
import comfy.model_base

from ..keymap import KeyResolver, detect_family_from_model_keys

# ComfyUI model_base class name -> HadaKron family (subclasses listed before their bases).
_CLASS_FAMILIES = (
    ("HunyuanVideo15", "hunyuan_video_1_5"),
    ("HunyuanVideo", "hunyuan_video"),
    ("Flux2", "flux2"),
    ("Flux", "flux"),
    ("WAN22", "wan"),
    ("WAN21", "wan"),
    ("QwenImage", "qwen_image"),
    ("Lumina2", "z_image"),
    ("Kandinsky5", "kandinsky5"),
)


def model_family(base_model) -> str | None:
    """Family of a ComfyUI ``BaseModel`` (by class, falling back to key names)."""
    for class_name, family in _CLASS_FAMILIES:
        cls = getattr(comfy.model_base, class_name, None)
        if cls is not None and isinstance(base_model, cls):
            return family
    return detect_family_from_model_keys(base_model.state_dict().keys())


def parameter_shapes(module) -> dict[str, tuple[int, ...]]:
    """``{parameter/buffer name: shape}`` (state-dict names) without building a state dict."""
    shapes = {}
    for prefix, sub in module.named_modules():
        stem = f"{prefix}." if prefix else ""
        for tensors in (sub._parameters, sub._buffers):
            for name, tensor in tensors.items():
                if tensor is not None:
                    shapes.setdefault(stem + name, tuple(tensor.shape))
    return shapes


def unet_resolver(model_patcher) -> KeyResolver:
    """Resolver for a MODEL: ComfyUI's own key map first, then HadaKron's tables."""
    base = model_patcher.model
    return KeyResolver(
        parameter_shapes(base), family=model_family(base), aliases=lambda: comfy.lora.model_lora_keys_unet(base, {})
    )


def clip_resolver(clip) -> KeyResolver:
    """Resolver for a CLIP: text-encoder spellings come from ComfyUI's key map."""
    aliases = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    shapes = parameter_shapes(clip.cond_stage_model)
    return KeyResolver(shapes, family="clip", aliases=aliases, prefix="\0")


def log_once(message: str) -> None:
    logging.getLogger("hadakron").info(message)
