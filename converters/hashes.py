"""sd-webui additional-networks hashes ``sshs_model_hash`` / ``sshs_legacy_hash`` (formats.md §16)."""

from __future__ import annotations

import hashlib
import struct

import torch

HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")
_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000


def safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """``(model_hash, legacy_hash)`` as sd-scripts' ``precalculate_safetensors_hashes`` computes them.

    The tensors are serialised with only the ``ss_*`` metadata (safetensors' canonical order);
    the model hash covers everything after the header, the legacy hash 64 KiB at offset 1 MiB.
    """
    from safetensors.torch import save

    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = save({k: v.contiguous() for k, v in tensors.items()}, training)
    (header_len,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(blob[_LEGACY_OFFSET : _LEGACY_OFFSET + _LEGACY_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash


def refresh_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Recompute the hashes in ``metadata`` (in place) when the file had them; returns whether it did."""
    if not any(key in metadata for key in HASH_KEYS):
        return False
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = safetensors_hashes(tensors, metadata)
    return True
