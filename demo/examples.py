"""The example workflows shipped in ``example_workflows/``: specs written for real users' files.

``scripts/gen_examples.py`` renders them to UI-format JSON with the live node definitions; the
demo and the tests run them on the embedded default by overriding file names and replacing text
encoding with the documented stand-in (:func:`demo.workflows.with_standin_text`).
"""

from __future__ import annotations

from .workflows import Node

WAN_UNET = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_TE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
PROMPT = "a red fox running through snow, cinematic"
NEGATIVE = "blurry, low quality"


def _wan_sampling(model_key: str, prefix: str) -> list[Node]:
    return [
        Node("te", "CLIPLoader", {"clip_name": WAN_TE, "type": "wan"}),
        Node("pos", "CLIPTextEncode", {"text": PROMPT}, {"clip": ("te", 0)}),
        Node("neg", "CLIPTextEncode", {"text": NEGATIVE}, {"clip": ("te", 0)}),
        Node("latent", "EmptyHunyuanLatentVideo", {"width": 480, "height": 320, "length": 17, "batch_size": 1}),
        Node(
            "sampler",
            "KSampler",
            {"seed": 42, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
            {"model": (model_key, 0), "positive": ("pos", 0), "negative": ("neg", 0), "latent_image": ("latent", 0)},
        ),
        Node("vae", "VAELoader", {"vae_name": WAN_VAE}),
        Node("decode", "VAEDecode", {}, {"samples": ("sampler", 0), "vae": ("vae", 0)}),
        Node("save", "SaveAnimatedWEBP", {"filename_prefix": prefix, "fps": 16.0}, {"images": ("decode", 0)}),
    ]


def load_lokr_wan() -> list[Node]:
    """UNETLoader -> Load LoHa/LoKr/LoRA -> KSampler on WAN 2.1."""
    return [
        Node("unet", "UNETLoader", {"unet_name": WAN_UNET, "weight_dtype": "default"}),
        Node(
            "adapter",
            "HadaKronLoadAdapter",
            {"adapter_name": "my_wan_lokr.safetensors", "strength_model": 1.0, "convention": "auto"},
            {"model": ("unet", 0)},
        ),
        *_wan_sampling("adapter", "hadakron/wan_lokr"),
    ]


def zimage_to_comfy() -> list[Node]:
    """A musubi Z-Image LoKr converted for ComfyUI's fused attention (hybrid LoRA-on-qkv file)."""
    return [Node("convert", "HadaKronConvertZImageQKV", {"adapter_name": "my_zimage_lokr.safetensors"})]


def merge_two() -> list[Node]:
    """Two adapter files merged into one LoRA at a chosen rank, with kept energy reported."""
    return [
        Node(
            "combine",
            "HadaKronCombineAdapters",
            {
                "adapter_1": "style_lokr.safetensors",
                "adapter_2": "character_loha.safetensors",
                "mode": "svd",
                "rank": 32,
            },
        )
    ]


def train_and_sample() -> list[Node]:
    """Dataset folder -> Train LoKr -> sample with the trained model."""
    return [
        Node("unet", "UNETLoader", {"unet_name": WAN_UNET, "weight_dtype": "default"}),
        Node("vae_for_data", "VAELoader", {"vae_name": WAN_VAE}),
        Node("te_data", "CLIPLoader", {"clip_name": WAN_TE, "type": "wan"}),
        Node(
            "dataset",
            "HadaKronDatasetFromFolder",
            {"folder": "my_dataset", "width": 480, "height": 320},
            {"vae": ("vae_for_data", 0), "clip": ("te_data", 0)},
        ),
        Node(
            "train",
            "HadaKronTrainAdapter",
            {"steps": 500, "output_name": "my_wan_lokr", "sample_every_n_steps": 100},
            {"model": ("unet", 0), "dataset": ("dataset", 0), "positive": ("pos", 0), "sample_vae": ("vae", 0)},
        ),
        *_wan_sampling("train", "hadakron/trained_sample"),
    ]


def node_ids(spec: list[Node]) -> dict[str, str]:
    """Spec key -> node id as rendered (ids follow spec order)."""
    return {node.key: str(index + 1) for index, node in enumerate(spec)}


EXAMPLES = {
    "load_lokr_wan": load_lokr_wan,
    "zimage_lokr_to_comfy": zimage_to_comfy,
    "merge_two_adapters": merge_two,
    "train_lokr_from_folder": train_and_sample,
}


def train_demo(dataset: str, unet: str, vae: str, steps: int = 12) -> list[Node]:
    """The training example on the embedded default, with the demo's stand-in conditioning (UI tests)."""
    return [
        Node("unet", "UNETLoader", {"unet_name": unet, "weight_dtype": "default"}),
        Node("vae", "VAELoader", {"vae_name": vae}),
        Node("pos", "HadaKronTestSyntheticConditioning", {"seed": 1, "length": 8, "dim": 4096}),
        Node(
            "dataset", "HadaKronDatasetFromFolder", {"folder": dataset, "width": 64, "height": 64}, {"vae": ("vae", 0)}
        ),
        Node(
            "train",
            "HadaKronTrainAdapter",
            {
                "steps": steps,
                "learning_rate": 0.003,
                "network_dim": 8,
                "output_name": "hadakron_ui_lokr",
                "overwrite": True,
            },
            {"model": ("unet", 0), "dataset": ("dataset", 0), "positive": ("pos", 0)},
        ),
        Node("latent", "EmptyHunyuanLatentVideo", {"width": 64, "height": 64, "length": 1, "batch_size": 1}),
        Node(
            "sampler",
            "KSampler",
            {"seed": 3, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
            {"model": ("train", 0), "positive": ("pos", 0), "negative": ("pos", 0), "latent_image": ("latent", 0)},
        ),
        Node("stats", "HadaKronTestLatentStats", {}, {"samples": ("sampler", 0)}),
    ]
