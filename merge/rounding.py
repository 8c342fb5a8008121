"""Rounding a patched fp32 weight back to its storage dtype.

fp32/fp16/bf16: round to nearest (what ``Tensor.to`` does, and what ComfyUI does for these).
fp8 (e4m3fn, e5m2): *stochastic* rounding, seeded by the weight's key, like ComfyUI's patcher:
each value becomes one of its two neighbouring fp8 values with probability proportional to
closeness, so small adapter deltas survive on average instead of vanishing. HadaKron's version
finds the neighbours exactly from the fp8 bit patterns (sign-magnitude: the next value away
from zero is the next bit pattern), so representable values are kept bit for bit.
"""

from __future__ import annotations

import zlib

import torch

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
CHUNK_ELEMENTS = 1 << 22


def key_seed(key: str) -> int:
    """A stable 32-bit seed for a weight key (the same key always rounds the same way)."""
    return zlib.crc32(key.encode("utf-8"))


def round_to_dtype(value: torch.Tensor, dtype: torch.dtype, key: str) -> torch.Tensor:
    """``value`` (fp32) in ``dtype``: nearest for float types, stochastic (seeded by ``key``) for fp8."""
    if dtype in FP8_DTYPES:
        return stochastic_round_fp8(value, dtype, key_seed(key))
    return value.to(dtype)


def stochastic_round_fp8(value: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Round ``value`` to the fp8 ``dtype`` stochastically, chunk by chunk (bounded temporaries).

    Values beyond the format's range are clamped to its largest finite value, as ComfyUI does.
    """
    out = torch.empty(value.shape, dtype=dtype, device=value.device)
    gen = torch.Generator(device=value.device).manual_seed(int(seed))
    flat_in, flat_out = value.reshape(-1), out.view(-1)
    for start in range(0, flat_in.numel(), CHUNK_ELEMENTS):
        stop = min(flat_in.numel(), start + CHUNK_ELEMENTS)
        flat_out[start:stop] = _round_chunk(flat_in[start:stop].float(), dtype, gen)
    return out


def _round_chunk(x: torch.Tensor, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    limit = torch.finfo(dtype).max
    x = x.clamp(-limit, limit)
    nearest = x.to(dtype)
    near = nearest.float()
    bits = nearest.view(torch.uint8)
    # One step away from zero if |x| > |nearest|, else one step towards zero; the sign bit stays.
    step = torch.where(x.abs() > near.abs(), 1, -1).to(torch.int16)
    other_bits = (bits.to(torch.int16) + step).to(torch.uint8)
    other_bits = torch.where(near == 0, (x < 0).to(torch.uint8) * 0x80 + 1, other_bits)
    other = other_bits.view(dtype).float()
    gap = other - near
    exact = x == near
    prob_other = torch.where(exact, torch.zeros_like(x), (x - near) / torch.where(exact, torch.ones_like(gap), gap))
    take_other = torch.rand(x.shape, generator=gen, device=x.device) < prob_other
    return torch.where(take_other & ~exact, other_bits, bits).view(dtype)
