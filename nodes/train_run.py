"""What the train node does, step by step (ComfyUI side): inputs -> config -> session -> outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import folder_paths
import numpy as np
import torch

from ..common.errors import ConventionError
from ..loading import plan_adapter, read_adapter
from ..training.checkpoint import resolve_factor
from ..training.config import TrainConfig, apply_network_args
from ..training.data import from_native_lists
from ..training.loop import ModelAccess
from ..training.session import TrainingSession
from ..training.targets import PRESETS, inplace_guard_paths
from .guard import adapter_path
from .model_info import model_family
from .train_model import (
    ComfyModelAccess,
    ProgressReporter,
    block_paths,
    check_interrupt,
    comfy_training_mode,
    is_interrupt,
    trained_model,
    training_patcher,
)
from .train_sample import SamplePreviewer, SampleSettings, chain_steps

LOG = logging.getLogger("hadakron")
NONE = "[none]"


@dataclass
class TrainResult:
    """Everything the node outputs."""

    model: object
    lora: dict
    losses: list
    image: torch.Tensor
    path: str
    summary: str
    samples: torch.Tensor


def config_from_inputs(values: dict) -> TrainConfig:
    """A :class:`TrainConfig` from the node's widget values (names equal the config fields)."""
    names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in values.items() if k in names})
    config.explicit_factor = int(config.factor) != -1
    apply_network_args(config)
    config.validate()
    return config


def dataset_from_inputs(dataset, latents, positive):
    """The HadaKron dataset, or one built from native LATENT / CONDITIONING lists.

    With a dataset, ``positive`` (if connected) is used for items without encoded captions (a
    dataset built without a text encoder); the dataset object itself is never modified.
    """
    if dataset is not None:
        if positive and any(item.conditioning is None for item in dataset.items):
            items = [replace(i, conditioning=positive[0]) if i.conditioning is None else i for i in dataset.items]
            dataset = replace(dataset, items=items)
        if any(item.conditioning is None for item in dataset.items):
            raise ConventionError("dataset items have no conditioning: give the dataset a CLIP or connect positive")
        return dataset
    if not latents or not positive:
        raise ConventionError("connect a HadaKron dataset, or native latents and positive conditioning")
    return from_native_lists(list(latents), list(positive))


def _persisted_factor(name: str) -> tuple[object, int | None, int | None]:
    source = read_adapter(adapter_path(name))
    buffer, meta = source.parsed.persisted_factor()
    return source, buffer, meta


def _resolve_factor(config: TrainConfig, initial: str, resume: str):
    """Read the initial/resume file once; apply factor precedence (explicit > buffer > metadata > -1)."""
    chosen = resume if resume and resume != NONE else initial
    if not chosen or chosen == NONE:
        return None
    source, buffer, meta = _persisted_factor(chosen)
    if config.algo == "lokr":
        config.factor = resolve_factor(config.factor if config.explicit_factor else None, buffer, meta)
    return source


def run_training(model, dataset, values: dict, node_id=None, model_high=None, sampling=None) -> TrainResult:
    """Train on ``model`` with the node's ``values``; returns the outputs (files written on the way).

    ``sampling`` (:class:`SampleSettings`) turns on preview samples every N steps.
    """
    config = config_from_inputs(values)
    family = model_family(model.model)
    initial, resume = values.get("initial_weights", NONE), values.get("resume_from", NONE)
    source = _resolve_factor(config, initial, resume)
    loras = folder_paths.get_folder_paths("loras")[0]
    with torch.inference_mode(False), torch.enable_grad(), comfy_training_mode():  # executor runs in inference mode
        sources = (source, initial, resume)
        return _train(model, dataset, config, family, sources, loras, node_id, model_high, sampling or SampleSettings())


def _train(model, dataset, config, family, sources, loras, node_id, model_high, sampling) -> TrainResult:
    source, initial, resume = sources
    with training_patcher(model, config.training_dtype) as patcher, _high(model_high, config) as high:
        access = ComfyModelAccess(patcher, high, config.timestep_boundary)
        root = patcher.model.diffusion_model
        roots = [root] + ([high.model.diffusion_model] if high is not None else [])
        blocks = (
            block_paths(root, PRESETS[family].blocks) if config.gradient_checkpointing and family in PRESETS else None
        )
        guards = inplace_guard_paths(root.named_modules(), family)
        model_access = ModelAccess(access.prepare, access.predict, roots, blocks, guards)
        session = TrainingSession(root, family, config, dataset, model_access, loras, access.device, _model_name(model))
        summary = _start(session, source, resume, initial)
        reporter = ProgressReporter(node_id, session.trainer.total, session.start_step)
        previewer = SamplePreviewer(sampling, access, session.network, dataset, reporter.bar)
        path = session.train(chain_steps(reporter, previewer), check_interrupt, is_interrupt)
    return _outputs(model, session, path, summary, previewer.images())


def _start(session: TrainingSession, source, resume: str, initial: str) -> str:
    if resume and resume != NONE:
        step = session.resume(adapter_path(resume))
        note = f"resumed {Path(resume).name} at step {step}"
    elif source is not None:
        planned, _ = plan_adapter(source, session.resolver(), strict_family=False)
        note = session.load_initial(source, planned)
    else:
        note = "fresh adapter"
    session.check_outputs()
    return note


class _high:
    """Context: the optional WAN 2.2 high-noise expert, loaded for training (or ``None``)."""

    def __init__(self, model_high, config: TrainConfig):
        self.model_high, self.config = model_high, config
        self._cm = None

    def __enter__(self):
        if self.model_high is None:
            return None
        self._cm = training_patcher(self.model_high, self.config.training_dtype)
        return self._cm.__enter__()

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc) if self._cm is not None else False


def _model_name(model) -> str:
    cfg = getattr(model.model, "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(model.model).__name__


def _outputs(model, session: TrainingSession, path: Path, summary: str, samples: torch.Tensor) -> TrainResult:
    network = session.network
    lora = network.state_dict_for_file("comfy", torch.float32, with_factor=False)
    losses = list(session.trainer.losses)
    text = (
        f"{summary}; {len(session.specs)} modules ({session.config.algo}, dim {session.config.network_dim}, "
        f"factor {session.config.factor}); {session.trainer.step} steps; final loss "
        f"{losses[-1] if losses else float('nan'):.5f}; saved {path.name}"
    )
    image = loss_image(losses)
    return TrainResult(trained_model(model, network), lora, losses, image, str(path), text, samples)


def loss_image(losses: list[float], width: int = 800, height: int = 480, margin: int = 40) -> torch.Tensor:
    """Loss curve as an IMAGE ``[1, H, W, 3]``, drawn with PIL like ComfyUI's LossGraphNode."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width + margin, height + margin), "white")
    draw = ImageDraw.Draw(img)
    values = [float(v) for v in losses] or [0.0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    points = [
        (margin + int(i / max(1, len(values) - 1) * width), height - int((v - low) / span * height))
        for i, v in enumerate(values)
    ]
    if len(points) > 1:
        draw.line(points, fill="blue", width=2)
    draw.line([(margin, 0), (margin, height)], fill="black", width=2)
    draw.line([(margin, height), (width + margin, height)], fill="black", width=2)
    font = ImageFont.load_default()
    draw.text((5, height // 2), "Loss", font=font, fill="black")
    draw.text((width // 2, height + 10), "Steps", font=font, fill="black")
    draw.text((margin - 30, 0), f"{high:.3f}", font=font, fill="black")
    draw.text((margin - 30, height - 10), f"{low:.3f}", font=font, fill="black")
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]


def lora_choices() -> list[str]:
    """``[none]`` plus ComfyUI's loras list (initial weights / resume)."""
    return [NONE] + folder_paths.get_filename_list("loras")
