"""Z-Image (Lumina2/ZImage in ComfyUI) QKV conversion tables (architectures.md §6, formats.md §12).

musubi-tuner trains ``layers.N.attention.to_q/to_k/to_v/to_out.0``; ComfyUI's model has one fused
``attention.qkv`` (11520×3840), ``attention.out`` and ``q_norm``/``k_norm``.
"""

from __future__ import annotations

from .qkv import QkvSpec, suffix_renames

_BLOCK = r"(?:layers|noise_refiner|context_refiner)_\d+_attention"

ZIMAGE_SPEC = QkvSpec(
    family="z_image",
    label="Z-Image",
    split=rf"(?P<base>{_BLOCK})_to_(?P<part>[qkv])",
    fused="{base}_qkv",
    fused_pattern=rf"(?P<base>{_BLOCK})_qkv",
    part="{base}_to_{part}",
    **suffix_renames(
        (_BLOCK, "to_out_0", "out"),
        (_BLOCK, "norm_q", "q_norm"),
        (_BLOCK, "norm_k", "k_norm"),
    ),
    # ComfyUI maps diffusers q/k/v names onto qkv row slices natively (comfy.utils.z_image_to_diffusers).
    lossless_prefix="diffusion_model.",
)
