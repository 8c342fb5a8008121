"""Load LoHa/LoKr/LoRA on real tiny ComfyUI models: every family, naming style and algorithm, exactly."""

from __future__ import annotations

import pytest
import torch

from loader_helpers import base, dense, factors, patched, rank_of, write_adapter
from tiny_models import build_tiny

pytestmark = pytest.mark.comfy

STRENGTH = 0.8
# family -> [(file module name, algo, ComfyUI key, row slice (start, length) or None)]
CASES = {
    "wan21": [
        ("lora_unet_blocks_0_self_attn_q", "lokr", "blocks.0.self_attn.q", None),
        ("transformer.blocks.0.attn1.to_k", "lora", "blocks.0.self_attn.k", None),
        ("diffusion_model.blocks.1.ffn.0", "loha", "blocks.1.ffn.0", None),
        ("lycoris_blocks_0_cross_attn_o", "lokr_full", "blocks.0.cross_attn.o", None),
        ("lora_unet__blocks_1_ffn_2", "lora", "blocks.1.ffn.2", None),
    ],
    "zimage": [
        ("lora_unet_layers_0_attention_to_q", "lokr", "layers.0.attention.qkv", (0, 128)),
        ("lora_unet_layers_0_attention_to_k", "lokr", "layers.0.attention.qkv", (128, 128)),
        ("lora_unet_layers_0_attention_to_v", "loha", "layers.0.attention.qkv", (256, 128)),
        ("lora_unet_layers_0_attention_to_out_0", "lora", "layers.0.attention.out", None),
        ("lora_unet_layers_0_feed_forward_w1", "lokr_full", "layers.0.feed_forward.w1", None),
    ],
    "flux1": [
        ("diffusion_model.double_blocks.0.img_attn_qkv", "lokr", "double_blocks.0.img_attn.qkv", None),
        ("transformer.single_transformer_blocks.0.attn.to_k", "lora", "single_blocks.0.linear1", (128, 128)),
        ("transformer.single_transformer_blocks.0.proj_mlp", "loha", "single_blocks.0.linear1", (384, 512)),
        ("lora_unet_double_blocks_0_txt_mlp_0", "lokr", "double_blocks.0.txt_mlp.0", None),
    ],
    "flux2": [
        ("lora_unet_single_blocks_0_linear1", "lokr", "single_blocks.0.linear1", None),
        ("lora_unet_double_blocks_0_img_attn_proj", "loha", "double_blocks.0.img_attn.proj", None),
    ],
    "hunyuan_video": [
        ("lora_unet_double_blocks_0_img_mlp_fc1", "lora", "double_blocks.0.img_mlp.0", None),
        ("lora_unet_double_blocks_0_img_mod_linear", "lokr", "double_blocks.0.img_mod.lin", None),
        ("lora_unet_single_blocks_0_modulation_linear", "loha", "single_blocks.0.modulation.lin", None),
    ],
    "hunyuan_video15": [
        ("lora_unet_double_blocks_0_img_attn_q", "lokr", "double_blocks.0.img_attn.qkv", (0, 128)),
        ("lora_unet_double_blocks_0_img_attn_k", "loha", "double_blocks.0.img_attn.qkv", (128, 128)),
        ("lora_unet_double_blocks_0_img_attn_v", "lora", "double_blocks.0.img_attn.qkv", (256, 128)),
        ("lora_unet_double_blocks_0_txt_mlp_fc2", "lokr", "double_blocks.0.txt_mlp.2", None),
    ],
    "qwen_image": [
        ("lora_unet_transformer_blocks_0_img_mod_1", "lokr", "transformer_blocks.0.img_mod.1", None),
        ("transformer.transformer_blocks.0.attn.to_q", "lora", "transformer_blocks.0.attn.to_q", None),
        ("lycoris_transformer_blocks_0_img_mlp_net_0_proj", "loha", "transformer_blocks.0.img_mlp.net.0.proj", None),
    ],
}


def _loras_dir(comfy):
    from pathlib import Path

    return Path(comfy.folder_paths.get_folder_paths("loras")[0])


def _build_file(mp, cases, gen):
    sd = mp.model.state_dict()
    tensors, expected = {}, {}
    for name, algo, module, rows in cases:
        shape = tuple(sd[f"diffusion_model.{module}.weight"].shape)
        out = rows[1] if rows else shape[0]
        parts = factors(algo.replace("_full", ""), out, shape[1], gen=gen, full_lokr=algo.endswith("_full"))
        alpha = 2.0
        tensors.update({name + k: v for k, v in parts.items()})
        tensors[name + ".alpha"] = torch.tensor(alpha)
        rank = rank_of(parts)
        scale = 1.0 if rank is None else alpha / rank
        expected.setdefault(module, []).append((rows, scale * dense(parts)))
    return tensors, expected


@pytest.mark.parametrize("family", list(CASES))
def test_every_family_and_style_loads_exactly(comfy, family):
    mp = build_tiny(family, seed=1)
    tensors, expected = _build_file(mp, CASES[family], torch.Generator().manual_seed(7))
    name = write_adapter(_loras_dir(comfy), f"{family}_mixed.safetensors", tensors)
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        out = node.execute(model=mp, adapter_name=name, strength_model=STRENGTH, convention="auto")
    new_model, _, report = out.result
    assert "UNMATCHED" not in report and "SHAPE MISMATCH" not in report, report
    assert mp.patches == {}, "the input model must stay unpatched"
    for module, deltas in expected.items():
        key = f"diffusion_model.{module}.weight"
        want = base(mp, key)
        for rows, delta in deltas:
            target = want if rows is None else want.narrow(0, rows[0], rows[1])
            target += STRENGTH * delta
        torch.testing.assert_close(patched(new_model, key), want, rtol=1e-5, atol=1e-6)
