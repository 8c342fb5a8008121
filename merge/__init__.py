"""Merge engines (pure, no ComfyUI): bake adapters into a model file; combine adapters (see combine.py).

* :func:`bake_file` — stream a diffusion-model safetensors file, baking adapters key by key;
* :func:`open_model_file` — a model file's header (shapes, dtypes, family) without its data;
* :func:`round_to_dtype` — fp32 back to the storage dtype (stochastic, key-seeded for fp8).
"""

from .bake import BakeAdapter, BakeReport, KeyPatch, bake_file, patched_tensor, plan_bake
from .model_file import ModelFile, open_model_file
from .rounding import round_to_dtype, stochastic_round_fp8

__all__ = [
    "BakeAdapter",
    "BakeReport",
    "KeyPatch",
    "ModelFile",
    "bake_file",
    "open_model_file",
    "patched_tensor",
    "plan_bake",
    "round_to_dtype",
    "stochastic_round_fp8",
]
