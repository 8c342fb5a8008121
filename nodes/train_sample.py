"""Preview samples while training (the ``sample_*`` inputs of ``HadaKronTrainAdapter``).

Every ``sample_every_n_steps`` optimizer steps the trainer's ``on_step`` hook runs ComfyUI's own
sampler (``comfy.sample.sample``) on the training model patcher, whose target modules are still routed
through the adapters, so the sample shows the adapter exactly as trained so far. Sampling runs under
``torch.no_grad`` with the adapters in eval mode (no dropout), ComfyUI's ``in_training`` flag off, and
every global RNG state saved and restored, so the training run is bit-identical with or without it.
The latent has the shape of the dataset's first latent (image and video families alike); without a
VAE the preview is the latent format's latent-to-RGB projection. With a WAN 2.2 high-noise expert the
steps at ``sigma >= timestep_boundary`` run on it, as in training.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import numpy as np
import torch
import torch.nn.functional as F

from ._comfy import io
from .train_model import clone_tree, comfy_training_mode, is_interrupt

LOG = logging.getLogger("hadakron")
PREVIEW_SIZE = 512
EMPTY_SAMPLES = (1, 64, 64, 3)


def sample_inputs() -> list:
    """The optional preview-sampling inputs (after every existing input, so old workflows keep working)."""
    samplers = list(comfy.samplers.KSampler.SAMPLERS)
    schedulers = list(comfy.samplers.KSampler.SCHEDULERS)
    return [
        io.Int.Input(
            "sample_every_n_steps",
            default=0,
            min=0,
            max=10_000_000,
            optional=True,
            tooltip="Sample with the adapter as trained so far every N steps (not at step 0) and show it as the "
            "node's preview; 0 = off.",
        ),
        io.Conditioning.Input(
            "sample_positive",
            optional=True,
            tooltip="Positive conditioning for the preview samples (default: the first training item's caption).",
        ),
        io.Conditioning.Input(
            "sample_negative",
            optional=True,
            tooltip="Negative conditioning for the preview samples (default: the positive zeroed out, as "
            "ConditioningZeroOut; unused at cfg 1).",
        ),
        io.Vae.Input(
            "sample_vae",
            optional=True,
            tooltip="Decode preview samples with this VAE; without it the latent is shown through the model's "
            "latent-to-RGB projection (small, rough colours).",
        ),
        io.Int.Input(
            "sample_seed", default=0, min=0, max=2**63 - 1, optional=True, tooltip="Noise seed of every preview sample."
        ),
        io.Int.Input("sample_steps", default=8, min=1, max=1000, optional=True, tooltip="Sampler steps per preview."),
        io.Float.Input(
            "sample_cfg", default=1.0, min=0.0, max=100.0, step=0.1, optional=True, tooltip="CFG scale of the previews."
        ),
        io.Combo.Input(
            "sample_sampler", options=samplers, default="euler", optional=True, tooltip="Sampler of the previews."
        ),
        io.Combo.Input(
            "sample_scheduler",
            options=schedulers,
            default="simple",
            optional=True,
            tooltip="Scheduler (sigmas) of the previews.",
        ),
    ]


@dataclass
class SampleSettings:
    """What to sample and how often (``every`` 0 = off)."""

    every: int = 0
    seed: int = 0
    steps: int = 8
    cfg: float = 1.0
    sampler: str = "euler"
    scheduler: str = "simple"
    positive: list | None = None
    negative: list | None = None
    vae: object | None = None


def sample_settings(values: dict, positive=None, negative=None, vae=None) -> SampleSettings:
    """:class:`SampleSettings` from the node's widget values (missing optional widgets keep their defaults)."""
    d = SampleSettings()
    return SampleSettings(
        every=int(values.get("sample_every_n_steps", d.every)),
        seed=int(values.get("sample_seed", d.seed)),
        steps=int(values.get("sample_steps", d.steps)),
        cfg=float(values.get("sample_cfg", d.cfg)),
        sampler=str(values.get("sample_sampler", d.sampler)),
        scheduler=str(values.get("sample_scheduler", d.scheduler)),
        positive=positive,
        negative=negative,
        vae=vae,
    )


def zero_conditioning(conditioning: list) -> list:
    """``conditioning`` with its tensor and pooled output zeroed (what ComfyUI's ConditioningZeroOut does)."""
    out = []
    for tensor, extra in conditioning:
        extra = dict(extra)
        if extra.get("pooled_output") is not None:
            extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
        out.append([torch.zeros_like(tensor), extra])
    return out


def chain_steps(*callbacks):
    """One ``on_step`` callback calling each of ``callbacks`` in order."""

    def on_step(info) -> None:
        for callback in callbacks:
            callback(info)

    return on_step


@contextlib.contextmanager
def preserved_rng():
    """Restore the global torch (CPU, initialised CUDA), Python and NumPy RNG states on exit.

    ComfyUI seeds its sampling noise with ``torch.manual_seed``, which reseeds the global generators.
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(np_state)


@contextlib.contextmanager
def sampling_mode(network: torch.nn.Module):
    """No grad, adapters in eval mode (no dropout), ``in_training`` off, RNG preserved; all restored after."""
    was_training = network.training
    network.eval()
    try:
        with preserved_rng(), torch.no_grad(), comfy_training_mode(False):
            yield
    finally:
        network.train(was_training)


class SamplePreviewer:
    """``on_step`` hook: every N steps sample with the current adapter, preview it and keep the image.

    Args:
        settings: :class:`SampleSettings` (``every`` 0 makes this a no-op).
        access: the trainer's ``ComfyModelAccess`` (patcher, optional high-noise expert, boundary).
        network: the trained ``AdapterNetwork`` (attached to the model while training runs).
        dataset: the training dataset (first latent's shape; first caption as default positive).
        bar: the node's ``comfy.utils.ProgressBar`` the previews go to.
    """

    def __init__(self, settings: SampleSettings, access, network, dataset, bar):
        self.settings, self.access, self.network, self.bar = settings, access, network, bar
        self.collected: list[torch.Tensor] = []
        self.failed = False
        if settings.every <= 0:
            return
        positive = settings.positive if settings.positive is not None else dataset.items[0].conditioning
        negative = settings.negative if settings.negative is not None else zero_conditioning(positive)
        self.positive, self.negative = clone_tree(positive), clone_tree(negative)
        self.latent_shape = (1, *access.model_latent(dataset.items[0].latent).shape)

    def __call__(self, info) -> None:
        if self.failed or self.settings.every <= 0 or info.step <= 0 or info.step % self.settings.every:
            return
        started = time.perf_counter()
        try:
            with sampling_mode(self.network):
                image = self.sample_image()
        except Exception as exc:  # a failed preview must not end a long run; an interrupt still does
            if is_interrupt(exc):
                raise
            self.failed = True
            LOG.warning("HadaKron train: preview sample failed at step %d, previews off: %s", info.step, exc)
            return
        self.collected.append(image)
        LOG.info("HadaKron train: preview sample at step %d (%.1f s)", info.step, time.perf_counter() - started)
        self.bar.update_absolute(info.step, info.total, ("JPEG", to_pil(image), PREVIEW_SIZE))

    def sample_image(self) -> torch.Tensor:
        """One sample with the current weights as an IMAGE ``[1, H, W, 3]`` (training model reloaded after)."""
        try:
            latent = self.sample_latent()
            if self.settings.vae is not None:
                return first_frame(self.settings.vae.decode(latent))
            return latent_rgb(latent, self.access.patcher.model.latent_format)
        finally:
            patchers = [p for p in (self.access.patcher, self.access.high) if p is not None]
            comfy.model_management.load_models_gpu(patchers, memory_required=0, force_full_load=True)

    def sample_latent(self) -> torch.Tensor:
        """Denoise the seeded noise with ComfyUI's sampler (low/high expert split at the boundary)."""
        s = self.settings
        latent = torch.zeros(self.latent_shape)
        latent = comfy.sample.fix_empty_latent_channels(self.access.patcher, latent)
        noise = comfy.sample.prepare_noise(latent, s.seed)
        for index, (patcher, sigmas) in enumerate(self.stages()):
            stage_noise = noise if index == 0 else torch.zeros_like(noise)
            latent = comfy.sample.sample(
                patcher,
                stage_noise,
                s.steps,
                s.cfg,
                s.sampler,
                s.scheduler,
                self.positive,
                self.negative,
                latent,
                sigmas=sigmas,
                disable_pbar=True,
                seed=s.seed,
            )
        return latent.float().cpu()

    def stages(self) -> list[tuple[object, torch.Tensor]]:
        """``[(patcher, sigmas)]``: the whole schedule, or high-noise expert then low-noise model."""
        s, low, high = self.settings, self.access.patcher, self.access.high
        sigmas = comfy.samplers.KSampler(low, s.steps, "cpu", s.sampler, s.scheduler, 1.0).sigmas.cpu()
        if high is None:
            return [(low, sigmas)]
        split = int((sigmas[:-1] >= self.access.boundary).sum())
        stages = [(high, sigmas[: split + 1])] if split > 0 else []
        return stages + ([(low, sigmas[split:])] if split < len(sigmas) - 1 else [])

    def images(self) -> torch.Tensor:
        """Every collected sample as one IMAGE batch (a black 64x64 image when none was taken)."""
        if not self.collected:
            return torch.zeros(EMPTY_SAMPLES)
        return torch.cat(self.collected)


def first_frame(images: torch.Tensor) -> torch.Tensor:
    """The first frame of a VAE decode (``[B, H, W, 3]`` or video ``[B, F, H, W, 3]``) as ``[1, H, W, 3]``."""
    return images.reshape(-1, *images.shape[-3:])[:1].float().cpu().clamp(0, 1)


def latent_rgb(latent: torch.Tensor, latent_format) -> torch.Tensor:
    """A raw latent's first frame as a rough RGB image ``[1, h, w, 3]`` (ComfyUI's Latent2RGB factors).

    Formats without factors show their first three channels min-max normalised.
    """
    x = latent_format.process_in(latent.float())
    reshape = getattr(latent_format, "latent_rgb_factors_reshape", None)
    if reshape is not None:
        x = reshape(x)
    x = x[0, :, 0] if x.dim() == 5 else x[0]
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None or len(factors) != x.shape[0]:
        rgb = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])
        rgb = (rgb - rgb.amin()) / (rgb.amax() - rgb.amin()).clamp_min(1e-6)
        return rgb.movedim(0, -1)[None]
    weight = torch.tensor(factors, dtype=x.dtype).t()
    bias = getattr(latent_format, "latent_rgb_factors_bias", None)
    bias = torch.tensor(bias, dtype=x.dtype) if bias is not None else None
    rgb = F.linear(x.movedim(0, -1), weight, bias)
    return ((rgb + 1.0) / 2.0).clamp(0, 1)[None]


def to_pil(image: torch.Tensor):
    """An IMAGE ``[1, H, W, 3]`` in [0, 1] as a PIL image (the progress-bar preview)."""
    from PIL import Image

    return Image.fromarray((image[0].clamp(0, 1).numpy() * 255.0).round().astype(np.uint8))
