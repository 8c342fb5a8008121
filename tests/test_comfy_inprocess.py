"""Real ComfyUI 0.3.75 in-process: the runtime loads, tiny models build and ComfyUI maps LoRA keys for them."""

from __future__ import annotations

import pytest
import torch

from comfy_runtime import PACK_DIR_NAME
from tiny_models import FAMILIES, build_tiny, tiny_config, write_tiny_wan_file, write_tiny_wan_vae

pytestmark = pytest.mark.comfy

# Expected ComfyUI model_base class per tiny family.
MODEL_BASE_CLASS = {
    "wan21": "WAN21",
    "flux1": "Flux",
    "flux2": "Flux2",
    "hunyuan_video": "HunyuanVideo",
    "hunyuan_video15": "HunyuanVideo15",
    "zimage": "Lumina2",
    "qwen_image": "QwenImage",
}


def test_runtime_loads_on_cpu(comfy):
    assert comfy.comfy.model_management.get_torch_device().type == "cpu"
    for node_id in ("KSampler", "UNETLoader", "LoraLoaderModelOnly", "EmptyHunyuanLatentVideo"):
        comfy.node_class(node_id)
    custom_nodes = comfy.folder_paths.get_folder_paths("custom_nodes")
    assert custom_nodes == [str(comfy.base_dir / "custom_nodes")]
    assert PACK_DIR_NAME in comfy.nodes.LOADED_MODULE_DIRS, "the pack's __init__.py raised on import"
    assert comfy.pack_module is not None
    assert comfy.server.PromptServer.instance is comfy.prompt_server


def test_test_node_pack_registered(comfy):
    node = comfy.node_class("HadaKronTestSyntheticConditioning")
    out = node.execute(seed=3, length=5, dim=16)
    cond = out.result[0]
    assert cond[0][0].shape == (1, 5, 16)
    again = node.execute(seed=3, length=5, dim=16).result[0]
    assert torch.equal(cond[0][0], again[0][0])
    comfy.node_class("HadaKronTestLatentStats")


def test_families_cover_brief():
    assert set(FAMILIES) == set(MODEL_BASE_CLASS)
    with pytest.raises(ValueError, match="unknown tiny family"):
        tiny_config("sd15")


@pytest.mark.parametrize("family", FAMILIES)
def test_build_tiny_maps_lora_keys(comfy, family):
    mp = build_tiny(family, seed=0)
    assert isinstance(mp, comfy.comfy.model_patcher.ModelPatcher)
    assert type(mp.model).__name__ == MODEL_BASE_CLASS[family]
    state = mp.model.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    assert all(v.dtype == torch.float32 for k, v in state.items() if k.startswith("diffusion_model."))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())

    key_map = comfy.comfy.lora.model_lora_keys_unet(mp.model, {})
    assert key_map, f"ComfyUI maps no LoRA keys for {family}"
    targets = {v[0] if isinstance(v, tuple) else v for v in key_map.values()}
    # Every linear weight is reachable. (ComfyUI's diffusers alias tables also name optional layers a tiny
    # model lacks, e.g. Flux `pos_embed_input`; load_lora skips those, so extra targets are fine.)
    linear = {k for k, v in state.items() if k.startswith("diffusion_model.") and k.endswith(".weight") and v.ndim == 2}
    assert linear
    assert linear <= targets, f"unmapped linear weights: {sorted(linear - targets)[:5]}"


def test_build_tiny_is_deterministic(comfy):
    a = build_tiny("wan21", seed=0).model.state_dict()
    b = build_tiny("wan21", seed=0).model.state_dict()
    c = build_tiny("wan21", seed=1).model.state_dict()
    key = "diffusion_model.blocks.0.self_attn.q.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


def test_tiny_wan_forward_is_finite(comfy):
    model = build_tiny("wan21").model
    x = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model.apply_model(x, torch.tensor([0.5]), c_crossattn=context)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_tiny_wan_file_is_detected(comfy, tmp_path):
    path = write_tiny_wan_file(tmp_path / "tiny_wan21.safetensors")
    assert path.stat().st_size < 4 * 2**20
    mp = comfy.comfy.sd.load_diffusion_model(str(path))
    assert type(mp.model).__name__ == "WAN21"
    assert type(mp.model.model_config).__name__ == "WAN21_T2V"
    assert comfy.comfy.lora.model_lora_keys_unet(mp.model, {})


def test_tiny_wan_vae_round_trip(comfy, tmp_path):
    path = write_tiny_wan_vae(tmp_path / "tiny_wan21_vae.safetensors")
    vae = comfy.comfy.sd.VAE(sd=comfy.comfy.utils.load_torch_file(str(path)))
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latent = vae.encode(image)
        decoded = vae.decode(latent)
    assert tuple(latent.shape) == (1, 16, 1, 8, 8)
    assert tuple(decoded.shape) == (1, 1, 64, 64, 3)
    assert torch.isfinite(decoded).all()
