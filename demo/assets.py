"""The embedded default: a tiny WAN 2.1 model and VAE (detected by ComfyUI's own loaders), a small
generated image dataset with captions, and small adapter files for the conversion and merge examples."""

from __future__ import annotations

from pathlib import Path

import torch

from hadakron.common.tensor_files import save_tensor_file

DEMO_UNET = "hadakron_demo_wan.safetensors"
DEMO_VAE = "hadakron_demo_wan_vae.safetensors"
DEMO_DATASET = "hadakron_demo_dataset"
DEMO_LOHA = "hadakron_demo_loha.safetensors"
DEMO_ZIMAGE = "hadakron_demo_zimage_lokr.safetensors"
COLORS = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 30), (200, 60, 200), (30, 200, 200)]


def write_models(base: Path) -> None:
    """Tiny WAN 2.1 diffusion model + VAE through ComfyUI's classes (needs ComfyUI loaded in-process)."""
    from demo import tiny

    unet = base / "models" / "diffusion_models" / DEMO_UNET
    vae = base / "models" / "vae" / DEMO_VAE
    if not unet.exists():
        tiny.write_tiny_wan_file(unet)
    if not vae.exists():
        tiny.write_tiny_wan_vae(vae)


def write_dataset(base: Path, count: int = 6, size: int = 64) -> Path:
    """Images of coloured discs on a gradient with captions (the 'style' the demo LoKr learns)."""
    from PIL import Image, ImageDraw

    folder = base / "input" / DEMO_DATASET
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (size, size), (20 + 30 * index % 200, 20, 60))
        draw = ImageDraw.Draw(image)
        r = size // 4 + index * 2
        draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], fill=COLORS[index % len(COLORS)])
        image.save(folder / f"disc_{index:02d}.png")
        (folder / f"disc_{index:02d}.txt").write_text(f"hkdemo style, a coloured disc number {index}", "utf-8")
    return folder


def write_adapters(base: Path) -> None:
    """A WAN LoHa (merge example) and a musubi-named Z-Image LoKr with split q/k/v (conversion example)."""
    loras = base / "models" / "loras"
    gen = torch.Generator().manual_seed(3)
    loha = {}
    for block in range(1):
        for proj in "qkvo":
            name = f"lora_unet_blocks_{block}_self_attn_{proj}"
            loha.update(
                {
                    f"{name}.hada_w1_a": torch.randn(128, 4, generator=gen) * 0.05,
                    f"{name}.hada_w1_b": torch.randn(4, 128, generator=gen) * 0.05,
                    f"{name}.hada_w2_a": torch.randn(128, 4, generator=gen) * 0.05,
                    f"{name}.hada_w2_b": torch.randn(4, 128, generator=gen) * 0.05,
                    f"{name}.alpha": torch.tensor(4.0),
                }
            )
    save_tensor_file(loha, loras / DEMO_LOHA, {"ss_network_module": "networks.loha"}, overwrite=True)
    zimage = {}
    for proj in ("to_q", "to_k", "to_v", "to_out_0"):
        name = f"lora_unet_layers_0_attention_{proj}"
        zimage.update(
            {
                f"{name}.lokr_w1": torch.randn(16, 16, generator=gen) * 0.1,
                f"{name}.lokr_w2_a": torch.randn(16, 4, generator=gen) * 0.1,
                f"{name}.lokr_w2_b": torch.randn(4, 16, generator=gen) * 0.1,
                f"{name}.alpha": torch.tensor(4.0),
            }
        )
    save_tensor_file(
        zimage,
        loras / DEMO_ZIMAGE,
        {"ss_network_module": "networks.lokr", "ss_base_model_version": "z_image"},
        overwrite=True,
    )


def prepare(base: Path) -> Path:
    """Create (or reuse) the whole embedded default under ``base`` (a ComfyUI base directory)."""
    from demo import runtime

    runtime.prepare_base_dir(base)
    runtime.load_comfy(base, test_nodes=False)
    write_models(base)
    write_dataset(base)
    write_adapters(base)
    return base
