#!/usr/bin/env python3
"""Generate converters/tables/comfy_modules.json: ComfyUI's module names per family, from its model classes.

The converters recover dotted module names (``double_blocks.0.img_attn.qkv``) from ``lora_unet_``
names by table lookup, never by string repair. This script builds every supported family's
diffusion model from ComfyUI's own classes **on the meta device at the real sizes** (no weights,
no model file, no memory), lists its parameters, collapses block indices to ``{N}`` and writes a
compact table with the real shape of each module. Run it once per ComfyUI upgrade and commit the
result::

    .venv/bin/python scripts/gen_convert_tables.py            # needs .comfyui/ (scripts/setup.sh)

Families ComfyUI 0.3.75 lacks (FramePack, Kandinsky 5) and trainer-side names (musubi/diffusers)
are written by hand in converters/names.py from architectures.md.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "converters" / "tables" / "comfy_modules.json"
_BLOCK_INDEX = re.compile(r"((?:blocks|layers|refiner)\.)\d+(?=\.)")
_BLOCK_LIST = re.compile(r"^((?:[A-Za-z_]+\.)*[A-Za-z_]*(?:blocks|layers|refiner))\.(\d+)\.")

_FLUX_BASE = dict(
    in_channels=64, out_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
    num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, patch_size=1,
    qkv_bias=True, guidance_embed=True,
)  # fmt: skip
_HV_BASE = dict(
    image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
    hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=20, depth_single_blocks=40, axes_dim=[16, 56, 56],
    theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
    use_cond_type_embedding=False, vision_in_dim=None,
)  # fmt: skip
_WAN_BASE = dict(
    image_model="wan2.1", model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16,
    out_dim=16, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2), window_size=(-1, -1), qk_norm=True,
    cross_attn_norm=True, eps=1e-6,
)  # fmt: skip

# family -> [(supported_models class, unet_config)]; several configs are merged (e.g. WAN t2v + i2v).
CONFIGS: dict[str, list[tuple[str, dict]]] = {
    "wan": [("WAN21_T2V", _WAN_BASE), ("WAN21_I2V", {**_WAN_BASE, "model_type": "i2v", "in_dim": 36})],
    "flux": [("Flux", {**_FLUX_BASE, "image_model": "flux"})],
    "flux2": [
        (
            "Flux2",
            {
                **_FLUX_BASE,
                "image_model": "flux2",
                "in_channels": 128,
                "out_channels": 128,
                "vec_in_dim": None,
                "context_in_dim": 15360,
                "hidden_size": 6144,
                "mlp_ratio": 3.0,
                "num_heads": 48,
                "depth": 8,
                "depth_single_blocks": 48,
                "axes_dim": [32, 32, 32, 32],
                "theta": 2000,
                "qkv_bias": False,
                "global_modulation": True,
                "mlp_silu_act": True,
                "ops_bias": False,
                "default_ref_method": "index",
                "ref_index_scale": 10,
                "guidance_embed": True,
            },
        )
    ],
    "hunyuan_video": [("HunyuanVideo", _HV_BASE)],
    "hunyuan_video_1_5": [
        (
            "HunyuanVideo15",
            {
                **_HV_BASE,
                "in_channels": 65,
                "out_channels": 32,
                "vec_in_dim": None,
                "context_in_dim": 3584,
                "hidden_size": 2048,
                "num_heads": 16,
                "depth": 54,
                "depth_single_blocks": 0,
                "patch_size": [1, 1, 1],
                "guidance_embed": False,
                "byt5": True,
                "use_cond_type_embedding": True,
                "vision_in_dim": 1152,
                "meanflow_sum": True,
            },
        )
    ],
    "qwen_image": [
        (
            "QwenImage",
            dict(
                image_model="qwen_image",
                in_channels=64,
                out_channels=16,
                num_layers=60,
                attention_head_dim=128,
                num_attention_heads=24,
                joint_attention_dim=3584,
                patch_size=2,
                axes_dims_rope=(16, 56, 56),
            ),
        )
    ],  # fmt: skip
    "z_image": [
        (
            "ZImage",
            dict(
                image_model="lumina2",
                patch_size=2,
                in_channels=16,
                dim=3840,
                cap_feat_dim=2560,
                n_layers=30,
                n_refiner_layers=2,
                n_heads=30,
                n_kv_heads=30,
                qk_norm=True,
                axes_dims=[32, 48, 48],
                axes_lens=[1536, 512, 512],
                rope_theta=256.0,
                ffn_dim_multiplier=8.0 / 3.0,
                z_image_modulation=True,
                time_scale=1000.0,
                pad_tokens_multiple=32,
            ),
        )
    ],  # fmt: skip
}


def _load_comfy():
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    import comfy_runtime

    comfy_runtime.load_comfy(Path(tempfile.mkdtemp(prefix="hadakron_tables_")), test_nodes=False)
    import comfy.supported_models  # noqa: TID251 - generator script, run by hand against ComfyUI's classes
    import comfyui_version

    return comfy.supported_models, comfyui_version.__version__


def _drop_unknown(cls_name: str, cfg: dict) -> dict:
    if "meanflow_sum" in cfg:
        from comfy.ldm.hunyuan_video.model import HunyuanVideoParams  # noqa: TID251

        if "meanflow_sum" not in HunyuanVideoParams.__dataclass_fields__:
            cfg = {k: v for k, v in cfg.items() if k != "meanflow_sum"}
    return cfg


def family_modules(supported, family: str) -> dict:
    """``{"block_counts", "modules": {template: shape}, "raw": [...]}`` of one family (indices -> ``{N}``).

    ``raw`` lists the templates that are parameters themselves (no ``.weight``), e.g. ``blocks.{N}.modulation``.
    """
    table: dict[str, list[int]] = {}
    counts: dict[str, set[int]] = {}
    raw: set[str] = set()
    for cls_name, cfg in CONFIGS[family]:
        config = getattr(supported, cls_name)(_drop_unknown(cls_name, dict(cfg)))
        config.set_inference_dtype(torch.bfloat16, None)
        model = config.get_model({}, device=torch.device("meta"))
        for key, tensor in model.diffusion_model.state_dict().items():
            if key.endswith(".bias"):
                continue
            module = key[: -len(".weight")] if key.endswith(".weight") else key
            template = _BLOCK_INDEX.sub(r"\1{N}", module)
            table.setdefault(template, list(tensor.shape))
            if module == key:
                raw.add(template)
            for match in _BLOCK_LIST.finditer(module):
                counts.setdefault(match.group(1), set()).add(int(match.group(2)))
    return {
        "block_counts": {name: len(ids) for name, ids in sorted(counts.items())},
        "modules": dict(sorted(table.items())),
        "raw": sorted(raw),
    }


def main() -> None:
    supported, version = _load_comfy()
    families = {family: family_modules(supported, family) for family in CONFIGS}
    payload = {
        "comfyui_version": version,
        "generated_by": "scripts/gen_convert_tables.py (ComfyUI model classes on the meta device, real sizes)",
        "families": families,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{family}: {len(table['modules'])}" for family, table in families.items())
    print(f"wrote {OUT} ({sizes})")


if __name__ == "__main__":
    main()
