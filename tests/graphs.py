"""API-format graph pieces shared by the server tests: tiny WAN inputs and a fixed KSampler."""


def tiny_wan_inputs(unet_name: str) -> dict:
    """Nodes 1-4: UNETLoader, two seeded synthetic conditionings, an empty 32x32x1 video latent."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "2": {"class_type": "HadaKronTestSyntheticConditioning", "inputs": {"seed": 1, "length": 8}},
        "3": {"class_type": "HadaKronTestSyntheticConditioning", "inputs": {"seed": 2, "length": 8}},
        "4": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 32, "height": 32, "length": 1, "batch_size": 1},
        },
    }


def ksampler(model: list, seed: int, steps: int) -> dict:
    """KSampler (euler/simple, cfg 1, full denoise) on nodes 2, 3 and 4 of :func:`tiny_wan_inputs`."""
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "seed": seed,
            "steps": steps,
            "cfg": 1.0,
            "sampler_name": "euler",
            "scheduler": "simple",
            "positive": ["2", 0],
            "negative": ["3", 0],
            "latent_image": ["4", 0],
            "denoise": 1.0,
        },
    }
