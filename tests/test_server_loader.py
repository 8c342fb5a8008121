"""Real ComfyUI server: UNETLoader -> Load LoHa/LoKr/LoRA -> KSampler gives the same latent as
UNETLoader on the file ``python -m hadakron merge`` baked -> KSampler (bf16 and fp32 model files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_server import comfy_server
from graphs import ksampler, tiny_wan_inputs
from hadakron.cli import main
from hadakron.common.tensor_files import read_safetensors_header
from loader_helpers import factors
from tiny_models import write_tiny_wan_file

pytestmark = [pytest.mark.server, pytest.mark.slow]

STRENGTH = 0.8
# (file module, algo, model key): every algorithm, three naming styles
MODULES = [
    ("lora_unet_blocks_0_self_attn_q", "lokr", "blocks.0.self_attn.q.weight"),
    ("lora_unet_blocks_0_self_attn_o", "lokr_full", "blocks.0.self_attn.o.weight"),
    ("diffusion_model.blocks.0.ffn.0", "loha", "blocks.0.ffn.0.weight"),
    ("transformer.blocks.0.attn2.to_v", "lora", "blocks.0.cross_attn.v.weight"),
    ("lora_unet_blocks_0_ffn_2", "lora", "blocks.0.ffn.2.weight"),
]


def write_adapter_for(model_path: Path, out: Path) -> Path:
    """A LoRA/LoHa/LoKr hybrid file shaped from the model file's header; large enough to move the latent."""
    entries, _ = read_safetensors_header(model_path)
    gen, tensors = torch.Generator().manual_seed(3), {}
    for name, algo, key in MODULES:
        out_dim, in_dim = entries[key]["shape"]
        parts = factors(algo.replace("_full", ""), out_dim, in_dim, gen=gen, full_lokr=algo.endswith("_full"))
        tensors.update({name + k: v for k, v in parts.items()})
        tensors[name + ".alpha"] = torch.tensor(4.0)
    save_file(tensors, str(out))
    return out


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    base = tmp_path_factory.mktemp("server_loader")
    models, loras = base / "models" / "diffusion_models", base / "models" / "loras"
    loras.mkdir(parents=True)
    for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        model = write_tiny_wan_file(models / f"tiny_{tag}.safetensors", seed=6, dtype=dtype)
        adapter = write_adapter_for(model, loras / f"hybrid_{tag}.safetensors")
        argv = ["merge", "--model", str(model), "--adapter", str(adapter), "--strength", str(STRENGTH)]
        assert main([*argv, "--out", str(models / f"baked_{tag}.safetensors")]) == 0
    with comfy_server(base) as srv:
        yield srv


def sample_graph(unet: str, adapter: str | None, prefix: str) -> dict:
    """UNETLoader [-> HadaKronLoadAdapter] -> KSampler (fixed seed, synthetic conditioning) -> SaveLatent."""
    model = ["1", 0]
    graph = tiny_wan_inputs(unet)
    if adapter is not None:
        graph["7"] = {
            "class_type": "HadaKronLoadAdapter",
            "inputs": {
                "model": model,
                "adapter_name": adapter,
                "strength_model": STRENGTH,
                "convention": "auto",
                "strength_clip": 1.0,
                "apply_mode": "patch",
                "prefer_lycoris": False,
            },
        }
        model = ["7", 0]
    graph["5"] = ksampler(model, seed=42, steps=3)
    graph["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}}
    return graph


def run_latent(server, graph: dict) -> torch.Tensor:
    entry = server.run_prompt(graph, timeout=300)
    saved = entry["outputs"]["6"]["latents"][0]
    path = server.base_dir / "output" / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["latent_tensor"].float()


@pytest.mark.parametrize(("tag", "rel_tol"), [("fp32", 1e-5), ("bf16", 5e-3)])
def test_patch_then_sample_equals_bake_then_sample(server, tag, rel_tol):
    patched = run_latent(server, sample_graph(f"tiny_{tag}.safetensors", f"hybrid_{tag}.safetensors", f"A_{tag}"))
    baked = run_latent(server, sample_graph(f"baked_{tag}.safetensors", None, f"B_{tag}"))
    plain = run_latent(server, sample_graph(f"tiny_{tag}.safetensors", None, f"C_{tag}"))
    assert patched.shape == baked.shape == (1, 16, 1, 4, 4) and torch.isfinite(patched).all()
    effect = (patched - plain).norm()
    assert effect > 0.05 * patched.norm(), "the adapter must change the latent for the comparison to mean anything"
    assert (patched - baked).norm() <= rel_tol * patched.norm(), ((patched - baked).norm(), effect)


def test_merge_node_and_save_node_in_a_real_graph(server):
    """Merge Adapter into Model samples like the loader; Save Merged Model's file samples the same via UNETLoader."""
    loaded = run_latent(server, sample_graph("tiny_fp32.safetensors", "hybrid_fp32.safetensors", "L_fp32"))
    graph = sample_graph("tiny_fp32.safetensors", None, "M_fp32")
    graph["7"] = {
        "class_type": "HadaKronMergeIntoModel",
        "inputs": {
            "model": ["1", 0],
            "adapter_1": "hybrid_fp32.safetensors",
            "strength_1": STRENGTH,
            "convention_1": "auto",
            "adapter_2": "None",
        },
    }
    graph["5"]["inputs"]["model"] = ["7", 0]
    graph["8"] = {"class_type": "HadaKronSaveMergedModel", "inputs": {"model": ["7", 0], "filename_prefix": "hk/m"}}
    merged = run_latent(server, graph)
    saved = sorted((server.base_dir / "output" / "hk").glob("m_*.safetensors"))
    assert len(saved) == 1
    target = server.base_dir / "models" / "diffusion_models" / "saved_fp32.safetensors"
    target.write_bytes(saved[0].read_bytes())
    resampled = run_latent(server, sample_graph("saved_fp32.safetensors", None, "S_fp32"))
    assert (merged - loaded).norm() <= 1e-5 * loaded.norm()
    assert (resampled - loaded).norm() <= 1e-5 * loaded.norm()
