"""sd-webui additional-networks hashes ``sshs_model_hash`` / ``sshs_legacy_hash`` (formats.md §16).

Definition (sd-scripts / musubi-tuner, computed before saving): serialise the tensors as safetensors
with only the ``ss_*`` metadata (so user-editable keys never change the hash), then

* ``sshs_model_hash`` = SHA-256 (hex) of everything after the 8-byte length and the JSON header,
  i.e. the tensor data region;
* ``sshs_legacy_hash`` = the first 8 hex digits of SHA-256 of the 64 KiB at byte offset 1 MiB of
  that serialisation (the digest of nothing, ``e3b0c442``, for files under 1 MiB).

safetensors stores tensors sorted by dtype (widest first) and then by name, whatever order it is
given. Writing a file in that same order (:func:`with_hashes` returns it) makes its data region
byte-identical to the hashed one, so ``sshs_model_hash`` is also the SHA-256 of the written file's
data region, which is what sd-webui computes when it indexes the file.
"""

from __future__ import annotations

import hashlib
import json
import struct

import torch

HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000


def training_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The ``ss_*`` keys, the only metadata the hashes cover."""
    return {str(k): str(v) for k, v in metadata.items() if str(k).startswith("ss_")}


def hashed_serialisation(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes the hashes are defined on: ``tensors`` plus the ``ss_*`` metadata only."""
    from safetensors.torch import save

    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return save(plain, metadata=training_metadata(metadata))


def hashes_of_serialisation(blob: bytes) -> tuple[str, str]:
    """``(model_hash, legacy_hash)`` of a serialised safetensors file."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(blob[LEGACY_OFFSET : LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash


def storage_order(blob: bytes) -> list[str]:
    """Tensor names of a serialised safetensors file in the order their data is stored."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


def safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` of ``tensors`` with ``metadata`` (see the module docstring)."""
    return hashes_of_serialisation(hashed_serialisation(tensors, metadata))


def with_hashes(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``tensors`` in safetensors' storage order and a copy of ``metadata`` with both hashes set.

    Written in the returned order, the file's data region is exactly the hashed bytes.
    """
    blob = hashed_serialisation(tensors, metadata)
    model_hash, legacy_hash = hashes_of_serialisation(blob)
    ordered = {name: tensors[name] for name in storage_order(blob)}
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta.update(zip(HASH_KEYS, (model_hash, legacy_hash), strict=True))
    return ordered, meta
