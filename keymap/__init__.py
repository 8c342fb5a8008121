"""Key resolution: adapter module names (any producer's spelling) -> model weight keys.

Pure (no ComfyUI): works on the list of a model's parameter names and shapes, so the loader
node, the CLIs, the converters and the trainer share one resolver and one set of rename tables.
"""

from .families import FAMILIES, detect_family_from_adapter, detect_family_from_model_keys
from .resolver import KeyResolver, Target, split_producer_prefix

__all__ = [
    "FAMILIES",
    "KeyResolver",
    "Target",
    "detect_family_from_adapter",
    "detect_family_from_model_keys",
    "split_producer_prefix",
]
