"""sd-webui additional-networks hashes for converted files (formats.md §16; definition in :mod:`common.hashes`)."""

from __future__ import annotations

import torch

from ..common.hashes import HASH_KEYS, safetensors_hashes

__all__ = ["HASH_KEYS", "refresh_hashes", "safetensors_hashes"]


def refresh_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Recompute the hashes in ``metadata`` (in place) when the file had them; returns whether it did."""
    if not any(key in metadata for key in HASH_KEYS):
        return False
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = safetensors_hashes(tensors, metadata)
    return True
