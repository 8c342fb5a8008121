"""Timestep sampling and loss weighting as musubi-tuner does it (training.md §2).

``t ∈ [0, 1]`` is both the noise level and ComfyUI's σ for flow models: ``x_t = (1 − t)·x0 + t·ε``.
All draws come from the caller's ``torch.Generator`` (CPU), so runs are reproducible.
"""

from __future__ import annotations

import logging
import math

import torch

LOG = logging.getLogger("hadakron")

REJECTION_LOOPS = 1000


def shift(t: torch.Tensor, s: float) -> torch.Tensor:
    """``S·t / (1 + (S − 1)·t)``."""
    return s * t / (1 + (s - 1) * t)


def _lin(x1: float, y1: float, x2: float, y2: float, x: float) -> float:
    return y1 + (x - x1) * (y2 - y1) / (x2 - x1)


def resolution_mu(mode: str, height: int, width: int) -> float:
    """μ of the resolution-dependent shifts (flux_shift, flux2_shift, qwen_shift)."""
    if mode == "flux2_shift":
        return _lin(256, 0.5, 4096, 1.15, height * width)
    if mode == "qwen_shift":
        return _lin(256, 0.5, 8192, 0.9, (height // 2) * (width // 2))
    return _lin(256, 0.5, 4096, 1.15, (height // 2) * (width // 2))


def _sigma_mode_u(config, n: int, gen: torch.Generator) -> torch.Tensor:
    scheme = config.weighting_scheme
    if scheme == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen) * config.logit_std + config.logit_mean)
    u = torch.rand(n, generator=gen)
    if scheme == "mode":
        return 1 - u - config.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def _sigma_mode(config, n: int, gen: torch.Generator) -> torch.Tensor:
    """musubi ``sigma``: index into the unshifted scheduler timesteps 1000…1 (σ = timestep/1000)."""
    u = _sigma_mode_u(config, n, gen)
    lo, hi = config.min_timestep, config.max_timestep
    index = torch.floor(u * (hi - lo) + lo).clamp(0, 999)
    return (1000.0 - index) / 1000.0


def _base_draw(mode: str, s: float, config, n: int, gen: torch.Generator, hw: tuple[int, int]) -> torch.Tensor:
    if mode == "uniform":
        return torch.rand(n, generator=gen)
    if mode == "logsnr":
        logsnr = torch.randn(n, generator=gen) * config.logit_std + config.logit_mean
        return torch.sigmoid(-logsnr / 2)
    t = torch.sigmoid(config.sigmoid_scale * torch.randn(n, generator=gen))
    if mode == "shift":
        return shift(t, s)
    if mode in ("flux_shift", "flux2_shift", "qwen_shift"):
        return shift(t, math.exp(resolution_mu(mode, *hw)))
    return t  # sigmoid


def sample_t(config, n: int, gen: torch.Generator, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """``n`` values of ``t`` for latents of ``latent_shape`` (height, width = the last two dims)."""
    mode, s = config.resolved_timesteps()
    if mode == "sigma":
        return _sigma_mode(config, n, gen)
    hw = (int(latent_shape[-2]), int(latent_shape[-1]))
    lo, hi = config.min_timestep / 1000.0, config.max_timestep / 1000.0
    full = lo <= 0.0 and hi >= 1.0
    if full or not config.preserve_distribution_shape:
        t = _base_draw(mode, s, config, n, gen, hw)
        return t if full else t * (hi - lo) + lo
    return _rejection(mode, s, config, n, gen, hw, lo, hi)


def _rejection(mode, s, config, n, gen, hw, lo, hi) -> torch.Tensor:
    kept = torch.empty(0)
    for _ in range(REJECTION_LOOPS):
        t = _base_draw(mode, s, config, n, gen, hw)
        kept = torch.cat([kept, t[(t >= lo) & (t <= hi)]])
        if kept.numel() >= n:
            return kept[:n]
    LOG.warning("HadaKron train: timestep rejection sampling failed; squeezing the rest into [min, max]")
    rest = _base_draw(mode, s, config, n - kept.numel(), gen, hw) * (hi - lo) + lo
    return torch.cat([kept, rest])


def loss_weight(config, t: torch.Tensor) -> torch.Tensor | None:
    """Per-sample weights for ``cosmap`` / ``sigma_sqrt`` (None for the others)."""
    if config.weighting_scheme == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * t + 2 * t**2))
    if config.weighting_scheme == "sigma_sqrt":
        return t.clamp_min(1e-6) ** -2.0
    return None
