"""HunyuanVideo 1.5 QKV conversion tables (architectures.md §4, formats.md §12).

musubi-tuner's HV 1.5 blocks have separate ``img_attn_q/k/v`` (and ``txt_``), ``img_mlp.fc1/fc2`` and
``img_mod.linear``; ComfyUI runs the model with FLUX-style blocks: fused ``img_attn.qkv`` (6144×2048),
``img_mlp.0/2`` and ``img_mod.lin``. ComfyUI maps the split names nowhere, so they must be fused
(musubi's own converter fuses LoRA only; HadaKron fuses LoRA, LoHa and LoKr).
"""

from __future__ import annotations

from .qkv import QkvSpec, suffix_renames

_STREAM = r"double_blocks_\d+_(?:img|txt)"

HV15_SPEC = QkvSpec(
    family="hunyuan_video_1_5",
    label="HunyuanVideo 1.5",
    split=rf"(?P<base>{_STREAM}_attn)_(?P<part>[qkv])",
    fused="{base}_qkv",
    fused_pattern=rf"(?P<base>{_STREAM}_attn)_qkv",
    part="{base}_{part}",
    **suffix_renames(
        (f"{_STREAM}_mlp", "fc1", "0"),
        (f"{_STREAM}_mlp", "fc2", "2"),
        (f"{_STREAM}_mod", "linear", "lin"),
    ),
    lossless_prefix="lora_unet_",  # only HadaKron maps split HV 1.5 q/k/v onto the fused weight
)
