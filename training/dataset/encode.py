"""Duck-typed wrappers around ComfyUI's VAE and CLIP objects (no ComfyUI import here).

The node layer passes the live objects; the engine only calls their public methods
(``vae.encode``, ``clip.tokenize``/``encode_from_tokens_scheduled``, ``get_sd``) and reads a few
attributes (``latent_dim``, ``not_video``, ``layer_idx``, ``patcher.patches``).
"""

from __future__ import annotations

import hashlib
import json

import torch

FINGERPRINT_SAMPLES = 16
FINGERPRINT_ELEMENTS = 2048


def state_dict_fingerprint(state: dict) -> str:
    """A cheap identity for a set of weights: names, dtypes, shapes and values of a few tensors.

    Hashes every key with its dtype and shape, plus the first and last 2048 elements of up to 16
    evenly spaced tensors; enough to tell two checkpoints (or a retrained one) apart without
    reading gigabytes.
    """
    digest = hashlib.sha256()
    keys = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))
    for key in keys:
        tensor = state[key]
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
    step = max(1, len(keys) // FINGERPRINT_SAMPLES)
    for key in keys[::step][:FINGERPRINT_SAMPLES]:
        flat = state[key].detach().reshape(-1)
        sample = torch.cat([flat[:FINGERPRINT_ELEMENTS], flat[-FINGERPRINT_ELEMENTS:]])
        digest.update(sample.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return digest.hexdigest()


def _object_fingerprint(obj, extra: dict) -> str | None:
    get_sd = getattr(obj, "get_sd", None)
    if get_sd is None:
        return None
    try:
        state = get_sd()
    except Exception:  # a custom VAE/CLIP wrapper without weights we can read: no disk cache
        return None
    payload = json.dumps({"class": type(obj).__name__, **extra}, sort_keys=True, default=str)
    return hashlib.sha256((state_dict_fingerprint(state) + payload).encode()).hexdigest()


def _temporal_stride(vae) -> int:
    probe = getattr(vae, "temporal_compression_decode", None)
    try:
        stride = probe() if probe is not None else None
    except Exception:  # older ComfyUI VAE objects without a temporal ratio
        stride = None
    return int(stride) if stride else 1


class VaeEncoder:
    """Encodes ``(F, H, W, 3)`` pixel clips with a ComfyUI VAE; latents lose only the batch dim.

    Image VAEs give ``(C, h, w)`` per image (a video clip becomes ``(C, F, h, w)``, frame by frame);
    video VAEs (``latent_dim == 3``) give ``(C, f, h, w)`` (``f = 1`` for an image). Video VAEs
    encode one clip per call: ComfyUI treats a 4-D input to them as the frames of one video.
    """

    def __init__(self, vae):
        self.vae = vae
        self.latent_dim = int(getattr(vae, "latent_dim", 2))
        self.is_video = self.latent_dim == 3 and not getattr(vae, "not_video", False)
        self.temporal_stride = _temporal_stride(vae) if self.is_video else 1
        self.identity = _object_fingerprint(vae, {"latent_dim": self.latent_dim})

    def batch_key(self, pixels: torch.Tensor) -> tuple | None:
        """Clips with the same key may be encoded in one call; ``None``: encode alone."""
        if self.is_video or pixels.shape[0] != 1:
            return None
        return tuple(pixels.shape)

    def encode(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode clips (all the same shape when more than one) and return one latent per clip."""
        if len(clips) > 1:
            batch = torch.cat(clips, dim=0)
            return list(self.vae.encode(batch))
        clip = clips[0]
        if self.is_video:
            return [self.vae.encode(clip)[0]]
        out = self.vae.encode(clip)
        if clip.shape[0] == 1:
            return [out[0]]
        frames = out[:, :, 0] if out.ndim == 5 else out
        return [frames.movedim(0, 1)]


class ClipEncoder:
    """Encodes captions like ComfyUI's CLIPTextEncode: ``encode_from_tokens_scheduled(tokenize(text))``."""

    def __init__(self, clip):
        self.clip = clip
        self.identity = _object_fingerprint(clip, _clip_extras(clip))

    def encode(self, text: str) -> list:
        """The CONDITIONING for ``text``."""
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))


def _clip_extras(clip) -> dict:
    patches = getattr(getattr(clip, "patcher", None), "patches", None) or {}
    summary = sorted((str(k), [_patch_strength(p) for p in v]) for k, v in patches.items())
    return {
        "layer_idx": getattr(clip, "layer_idx", None),
        "tokenizer": type(getattr(clip, "tokenizer", None)).__name__,
        "tokenizer_options": getattr(clip, "tokenizer_options", None),
        "patches": hashlib.sha256(json.dumps(summary, default=str).encode()).hexdigest() if summary else "",
    }


def _patch_strength(patch) -> str:
    """Strengths plus a peek at the patch tensors (a different LoRA at the same strength differs)."""
    if not (isinstance(patch, (tuple, list)) and patch):
        return type(patch).__name__
    parts = [patch[0]] + [p for p in patch[2:4] if isinstance(p, (int, float))]
    for tensor in _tensors_in(patch[1] if len(patch) > 1 else None)[:4]:
        flat = tensor.detach().reshape(-1)[:64].to(device="cpu", dtype=torch.float32)
        parts.append([list(tensor.shape), hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]])
    return repr(parts)


def _tensors_in(obj, depth: int = 3) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth <= 0:
        return []
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors_in(item, depth - 1)]
    weights = getattr(obj, "weights", None)
    return _tensors_in(weights, depth - 1) if weights is not None else []
