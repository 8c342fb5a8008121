"""The ``comfy`` target in ComfyUI's NATIVE loader, the tables against ComfyUI's models, and the nodes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convert_helpers import loha, lokr, lora, module, write
from hadakron.adapters import lokr_shapes
from hadakron.converters.names import NameTable
from loader_helpers import patched
from tiny_models import build_tiny

pytestmark = pytest.mark.comfy

STRENGTH = 0.7
# family -> [(musubi-style module, algo, ComfyUI module, rows of a split part or None)]
CASES = {
    "wan21": [
        ("lora_unet_blocks_0_self_attn_q", "lokr", "blocks.0.self_attn.q", None),
        ("lora_unet_blocks_1_ffn_0", "loha", "blocks.1.ffn.0", None),
        ("lora_unet_blocks_0_cross_attn_o", "lokr_full", "blocks.0.cross_attn.o", None),
        ("lora_unet_blocks_1_ffn_2", "lora", "blocks.1.ffn.2", None),
    ],
    "zimage": [
        ("lora_unet_layers_0_attention_to_q", "lokr", "layers.0.attention.qkv", 0),
        ("lora_unet_layers_0_attention_to_k", "lokr_full", "layers.0.attention.qkv", 1),
        ("lora_unet_layers_0_attention_to_v", "loha", "layers.0.attention.qkv", 2),
        ("lora_unet_layers_0_attention_to_out_0", "lora", "layers.0.attention.out", None),
        ("lora_unet_layers_0_feed_forward_w1", "lokr_full", "layers.0.feed_forward.w1", None),
    ],
    "flux1": [
        ("lora_unet_double_blocks_0_img_attn_qkv", "lokr", "double_blocks.0.img_attn.qkv", None),
        ("lora_unet_single_blocks_0_linear1", "lora", "single_blocks.0.linear1", None),
        ("lora_unet_double_blocks_0_txt_mlp_0", "loha", "double_blocks.0.txt_mlp.0", None),
    ],
    "flux2": [
        ("lora_unet_single_blocks_0_linear1", "lokr", "single_blocks.0.linear1", None),
        ("lora_unet_double_blocks_0_img_attn_proj", "loha", "double_blocks.0.img_attn.proj", None),
    ],
    "hunyuan_video": [
        ("lora_unet_double_blocks_0_img_mlp_fc1", "lora", "double_blocks.0.img_mlp.0", None),
        ("lora_unet_double_blocks_0_img_mod_linear", "lokr", "double_blocks.0.img_mod.lin", None),
        ("lora_unet_single_blocks_0_modulation_linear", "loha", "single_blocks.0.modulation.lin", None),
        ("lora_unet_double_blocks_0_txt_attn_qkv", "lokr_full", "double_blocks.0.txt_attn.qkv", None),
    ],
    "hunyuan_video15": [
        ("lora_unet_double_blocks_0_img_attn_q", "lora", "double_blocks.0.img_attn.qkv", 0),
        ("lora_unet_double_blocks_0_img_attn_k", "lora", "double_blocks.0.img_attn.qkv", 1),
        ("lora_unet_double_blocks_0_img_attn_v", "lora", "double_blocks.0.img_attn.qkv", 2),
        ("lora_unet_double_blocks_0_txt_attn_q", "loha", "double_blocks.0.txt_attn.qkv", 0),
        ("lora_unet_double_blocks_0_txt_attn_k", "loha", "double_blocks.0.txt_attn.qkv", 1),
        ("lora_unet_double_blocks_0_txt_attn_v", "loha", "double_blocks.0.txt_attn.qkv", 2),
        ("lora_unet_double_blocks_0_txt_mlp_fc2", "lokr", "double_blocks.0.txt_mlp.2", None),
        ("lora_unet_double_blocks_0_img_mod_linear", "lokr_full", "double_blocks.0.img_mod.lin", None),
    ],
    "qwen_image": [
        ("lora_unet_transformer_blocks_0_img_mod_1", "lokr", "transformer_blocks.0.img_mod.1", None),
        ("lora_unet_transformer_blocks_0_attn_to_q", "lora", "transformer_blocks.0.attn.to_q", None),
        ("lora_unet_transformer_blocks_0_img_mlp_net_0_proj", "loha", "transformer_blocks.0.img_mlp.net.0.proj", None),
    ],
}


def _loras(comfy) -> Path:
    return Path(comfy.folder_paths.get_folder_paths("loras")[0])


def _factors(algo: str, out: int, inp: int, gen) -> dict:
    (out_l, in_m), (out_k, in_n) = lokr_shapes(out, inp, -1)
    if algo == "lora":
        return lora(out, inp, 4, gen, alpha=2.0)
    if algo == "loha":
        return loha(out, inp, 4, gen, alpha=2.0)
    if algo == "lokr":
        return lokr((out_l, in_m), (out_k, in_n), 4, gen, alpha=2.0)
    return lokr((out_l, in_m), (out_k, in_n), None, gen, alpha=64.0)  # musubi full mode: alpha = dim, scale 1


def _adapter(mp, family: str, gen) -> dict:
    sd = mp.model.state_dict()
    tensors = {}
    for name, algo, target, part in CASES[family]:
        out, inp = sd[f"diffusion_model.{target}.weight"].shape[:2]
        tensors.update(module(name, _factors(algo, out // 3 if part is not None else out, inp, gen)))
    return tensors


def _native(comfy, mp, lora_sd: dict, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        new_model, _ = comfy.comfy.sd.load_lora_for_models(mp, None, lora_sd, STRENGTH, 0.0)
    problems = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    return new_model, problems


def _hadakron(comfy, mp, name: str):
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        out = node.execute(model=mp, adapter_name=name, strength_model=STRENGTH, convention="auto")
    return out.result[0]


@pytest.mark.parametrize("family", list(CASES))
def test_comfy_target_loads_natively_like_hadakron(comfy, family, caplog):
    mp = build_tiny(family, seed=2)
    tensors = _adapter(mp, family, torch.Generator().manual_seed(11))
    folder = _loras(comfy)
    write(folder / f"conv_{family}.safetensors", tensors, {"ss_network_module": "networks.lokr"})
    node = comfy.node_class("HadaKronConvertFormat")
    result = node.execute(
        adapter_name=f"conv_{family}.safetensors",
        target="comfy",
        diffusers_prefix="diffusion_model",
        family="auto",
        output_name=f"conv_{family}_comfy",
        overwrite=True,
    ).result
    assert result[0] == f"conv_{family}_comfy.safetensors"
    converted = load_file(str(folder / result[0]))
    assert all(k.startswith("diffusion_model.") for k in converted), sorted(converted)
    native, problems = _native(comfy, mp, converted, caplog)
    assert problems == []
    ours = _hadakron(comfy, mp, f"conv_{family}.safetensors")
    for key in {f"diffusion_model.{target}.weight" for _, _, target, _ in CASES[family]}:
        want = patched(ours, key)
        assert not torch.equal(want, patched(mp, key)), key
        torch.testing.assert_close(patched(native, key), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["wan21", "zimage", "flux1", "flux2", "hunyuan_video", "hunyuan_video15"])
def test_generated_tables_cover_the_tiny_models(comfy, family):
    mp = build_tiny(family, seed=0)
    fam = {"wan21": "wan", "zimage": "z_image", "flux1": "flux", "hunyuan_video15": "hunyuan_video_1_5"}.get(
        family, family
    )
    table = NameTable(fam)
    for key in mp.model.state_dict():
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            path = key[len("diffusion_model.") : -len(".weight")]
            found = table.recover(path.replace(".", "_"), naming="comfy")
            assert found is not None and found.dotted == path, key


def test_zimage_and_hv15_nodes_write_into_loras(comfy):
    folder = _loras(comfy)
    gen = torch.Generator().manual_seed(12)
    z = {}
    for part in "qkv":
        z.update(module(f"lora_unet_layers_0_attention_to_{part}", lokr((8, 8), (16, 16), 2, gen, alpha=1.0)))
    write(folder / "z_in.safetensors", z)
    node = comfy.node_class("HadaKronConvertZImageQKV")
    args = dict(adapter_name="z_in.safetensors", lokr_rank=0, lossless=False, reverse=False, output_name="")
    name, report = node.execute(**args, overwrite=False).result
    assert name == "z_in_comfy.safetensors" and "LoKr -> LoRA" in report
    assert "lora_unet_layers_0_attention_qkv.lora_up.weight" in load_file(str(folder / name))
    with pytest.raises(Exception, match="exists"):
        node.execute(**args, overwrite=False)
    with pytest.raises(Exception, match="input"):
        node.execute(**{**args, "output_name": "z_in"}, overwrite=True)
    hv = {}
    for part in "qkv":
        hv.update(module(f"lora_unet_double_blocks_0_img_attn_{part}", loha(128, 128, 2, gen, alpha=1.0)))
    write(folder / "hv_in.safetensors", hv)
    node = comfy.node_class("HadaKronConvertHV15QKV")
    name, _ = node.execute(**{**args, "adapter_name": "hv_in.safetensors"}, overwrite=False).result
    assert "lora_unet_double_blocks_0_img_attn_qkv.hada_w1_a" in load_file(str(folder / name))
