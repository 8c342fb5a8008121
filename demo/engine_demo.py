"""Engine demo: a tiny WAN-shaped model and a LoKr/LoHa/LoRA hybrid adapter, loaded and applied.

Shows the pieces every node uses: parsing, convention detection, key resolution (musubi
``lora_unet_`` names, diffusers names, split q/k/v), exact in-place patching, and the load report.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from hadakron.adapters import apply_to_weight, init_lokr
from hadakron.common.tensor_files import save_tensor_file
from hadakron.keymap import KeyResolver
from hadakron.loading import plan_adapter, read_adapter


def tiny_wan_shapes(dim: int = 128, ffn: int = 256, blocks: int = 2) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a tiny WAN 2.1 transformer in ComfyUI's naming."""
    shapes = {}
    for b in range(blocks):
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"diffusion_model.blocks.{b}.{attn}.{proj}.weight"] = (dim, dim)
        shapes[f"diffusion_model.blocks.{b}.ffn.0.weight"] = (ffn, dim)
        shapes[f"diffusion_model.blocks.{b}.ffn.2.weight"] = (dim, ffn)
    return shapes


def demo_adapter(path: Path, gen: torch.Generator) -> Path:
    """A hybrid file: LoKr (musubi names), LoRA (diffusers names) and one module nobody has."""
    lokr = init_lokr(128, 128, rank=4, generator=gen)
    lokr.w2b = torch.randn(lokr.w2b.shape, generator=gen) * 0.1  # a "trained" adapter: ΔW ≠ 0
    tensors = {
        "lora_unet_blocks_0_self_attn_q.lokr_w1": lokr.w1,
        "lora_unet_blocks_0_self_attn_q.lokr_w2_a": lokr.w2a,
        "lora_unet_blocks_0_self_attn_q.lokr_w2_b": lokr.w2b,
        "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0),
        "transformer.blocks.1.attn1.to_k.lora_A.weight": torch.randn(4, 128, generator=gen) * 0.1,
        "transformer.blocks.1.attn1.to_k.lora_B.weight": torch.randn(128, 4, generator=gen) * 0.1,
        "lora_unet_blocks_9_ffn_0.lora_down.weight": torch.randn(4, 128, generator=gen),
        "lora_unet_blocks_9_ffn_0.lora_up.weight": torch.randn(256, 4, generator=gen),
    }
    return save_tensor_file(tensors, path, {"ss_network_module": "networks.lokr"}, overwrite=True)


def run(out=sys.stdout) -> dict[str, float]:
    """Build, load and apply; print the report and the effect per patched weight."""
    gen = torch.Generator().manual_seed(0)
    shapes = tiny_wan_shapes()
    weights = {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}
    with tempfile.TemporaryDirectory() as tmp:
        source = read_adapter(demo_adapter(Path(tmp) / "demo_hybrid.safetensors", gen))
        patches, report = plan_adapter(source, KeyResolver(shapes, family="wan"))
        out.write(report.render() + "\n")
    effects = {}
    for patch in patches:
        weight = weights[patch.target.key].clone()
        apply_to_weight(patch.adapter, weight, strength=1.0, scale=patch.scale)
        change = (weight - weights[patch.target.key]).norm() / weights[patch.target.key].norm()
        effects[patch.target.key] = float(change)
        out.write(f"  {patch.target.key}: relative change {change:.4f} ({patch.adapter.algo}, scale {patch.scale:g})\n")
    return effects


if __name__ == "__main__":
    run()
