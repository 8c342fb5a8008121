"""Nodes: Train LoKr/LoHa/LoRA (``HadaKronTrainAdapter``) and Save Adapter (``HadaKronSaveAdapter``)."""

from __future__ import annotations

import folder_paths
import torch

from ..training.checkpoint import output_names, save_adapter_file, save_dtype
from ..training.config import (
    ALGOS,
    KEY_FORMATS,
    SAVE_PRECISIONS,
    SCHEDULERS,
    TIMESTEP_MODES,
    TRAINING_DTYPES,
    WEIGHTING_SCHEMES,
    TrainConfig,
)
from ..training.export import convert_state_dict, describe
from ..training.metadata import RunInfo, full_metadata
from ..training.optim import OPTIMIZERS
from ._comfy import io, schema
from .guard import run_guarded
from .model_info import model_family
from .train_model import training_history
from .train_run import NONE, dataset_from_inputs, lora_choices, run_training
from .train_sample import sample_inputs, sample_settings

DATASET_TYPE = io.Custom("HADAKRON_DATASET")
KEY_FORMAT_HELP = (
    "musubi: lora_unet_<musubi module> keys with per-module alpha (musubi, LyCORIS, HadaKron; ComfyUI where "
    "its names equal musubi's); comfy: diffusion_model.<ComfyUI module> keys (ComfyUI's native loaders)."
)


def _help(name: str) -> str:
    return TrainConfig.__dataclass_fields__[name].metadata["help"]


def _int(name, default, lo, hi, key=None):
    return io.Int.Input(key or name, default=default, min=lo, max=hi, tooltip=_help(name))


def _float(name, default, lo, hi, step=0.001, key=None):
    return io.Float.Input(key or name, default=default, min=lo, max=hi, step=step, tooltip=_help(name))


def _bool(name, default):
    return io.Boolean.Input(name, default=default, tooltip=_help(name))


def _combo(name, options, default):
    return io.Combo.Input(name, options=list(options), default=default, tooltip=_help(name))


def _network_inputs() -> list:
    return [
        _combo("algo", ALGOS, "lokr"),
        _int("network_dim", 16, 1, 1024),
        _float("network_alpha", 1.0, 0.0, 100000.0, 0.01),
        _int("factor", -1, -1, 4096),
        _bool("decompose_both", False),
        _bool("full_matrix", False),
        _int("conv_dim", 0, 0, 1024),
        _float("conv_alpha", 0.0, 0.0, 100000.0, 0.01),
        _bool("train_conv", False),
        io.String.Input("network_args", default="", tooltip=_help("network_args")),
        _combo("target_preset", ("musubi", "all_linear"), "musubi"),
        io.String.Input("include", default="", tooltip=_help("include")),
        io.String.Input("exclude", default="", tooltip=_help("exclude")),
        _float("dropout", 0.0, 0.0, 0.99),
        _float("rank_dropout", 0.0, 0.0, 0.99),
        _float("module_dropout", 0.0, 0.0, 0.99),
    ]


def _run_inputs() -> list:
    return [
        _int("steps", 100, 1, 10_000_000),
        _int("epochs", 0, 0, 100_000),
        _int("batch_size", 1, 1, 4096),
        _int("grad_accum", 1, 1, 4096),
        _float("learning_rate", 1e-4, 0.0, 10.0, 0.000001),
        _combo("optimizer", OPTIMIZERS, "AdamW"),
        io.String.Input("optimizer_args", default="", tooltip=_help("optimizer_args")),
        _combo("lr_scheduler", SCHEDULERS, "constant"),
        _float("lr_warmup_steps", 0.0, 0.0, 1_000_000.0, 0.01),
        _float("weight_decay", 0.01, 0.0, 10.0, 0.0001),
        _float("max_grad_norm", 1.0, 0.0, 1000.0, 0.01),
        _combo("timestep_sampling", TIMESTEP_MODES, "family"),
        _float("discrete_flow_shift", 0.0, 0.0, 100.0, 0.01),
        _float("sigmoid_scale", 1.0, 0.0, 100.0, 0.01),
        _combo("weighting_scheme", WEIGHTING_SCHEMES, "none"),
        _float("min_timestep", 0.0, 0.0, 1000.0, 1.0),
        _float("max_timestep", 1000.0, 0.0, 1000.0, 1.0),
        _float("timestep_boundary", 0.875, 0.0, 1.0, 0.001),
        _float("caption_dropout", 0.0, 0.0, 0.99),
        _bool("shuffle_tags", False),
        _int("keep_tokens", 0, 0, 1000),
        _int("seed", 0, 0, 2**63 - 1),
        _combo("training_dtype", TRAINING_DTYPES, "default"),
        _bool("gradient_checkpointing", False),
    ]


def _file_inputs() -> list:
    return [
        _int("save_every_n_steps", 0, 0, 10_000_000),
        _int("keep_last_n", 0, 0, 100_000),
        io.String.Input("output_name", default="hadakron_lokr", tooltip=_help("output_name")),
        io.Combo.Input("key_format", options=list(KEY_FORMATS), default="musubi", tooltip=KEY_FORMAT_HELP),
        _combo("save_precision", SAVE_PRECISIONS, "fp32"),
        _bool("overwrite", False),
        io.Combo.Input(
            "initial_weights",
            options=lora_choices(),
            default=NONE,
            tooltip="Start from this adapter (musubi --network_weights, LyCORIS, any file HadaKron loads) where "
            "its modules match the structure being trained.",
        ),
        io.Combo.Input(
            "resume_from",
            options=lora_choices(),
            default=NONE,
            tooltip="Continue a run this node saved (a checkpoint with its .hkstate sidecar): adapter, optimizer, "
            "schedule, RNG, data order and step count.",
        ),
    ]


class TrainAdapter(io.ComfyNode):
    """Train a LoKr/LoHa/LoRA inside the graph with musubi-tuner's objective and file format."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="HadaKronTrainAdapter",
            display_name="Train LoKr/LoHa/LoRA",
            category="HadaKron/train",
            description="Flow-matching adapter training through the ComfyUI model's own forward: musubi-tuner's "
            "targets, timesteps, velocity loss and metadata; LoKr/LoHa never build the full delta. Optional preview "
            "samples every N steps (sample_* inputs).",
            is_experimental=True,
            is_input_list=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to train on (left unmodified)."),
                DATASET_TYPE.Input("dataset", optional=True, tooltip="Dataset from HadaKron Dataset From Folder."),
                io.Latent.Input("latents", optional=True, tooltip="Native LATENT list (instead of a dataset)."),
                io.Conditioning.Input(
                    "positive",
                    optional=True,
                    tooltip="Native CONDITIONING list (one per latent batch, or one); with a dataset, used for "
                    "items that have no encoded caption.",
                ),
                io.Model.Input(
                    "model_high",
                    optional=True,
                    tooltip="WAN 2.2 A14B: the high-noise expert; timesteps >= timestep_boundary use it.",
                ),
                *_network_inputs(),
                *_run_inputs(),
                *_file_inputs(),
                *sample_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the trained adapter applied."),
                io.LoraModel.Output(display_name="LORA_MODEL", tooltip="Adapter tensors (diffusion_model. keys)."),
                io.LossMap.Output(display_name="LOSS_MAP", tooltip="{'loss': [...]} per step."),
                io.Image.Output(display_name="loss_curve", tooltip="The loss curve."),
                io.String.Output(display_name="path", tooltip="The saved file."),
                io.Image.Output(
                    display_name="samples",
                    tooltip="The preview samples, one per sample point (first frame for video; a black 64x64 image "
                    "when sampling is off).",
                ),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, latents=None, positive=None, dataset=None, model_high=None, **widgets) -> io.NodeOutput:
        values = {k: v[0] for k, v in widgets.items() if isinstance(v, list) and v}
        links = {k: values.pop(k, None) for k in ("sample_positive", "sample_negative", "sample_vae")}

        def work():
            data = dataset_from_inputs(dataset[0] if dataset else None, latents, positive)
            high = model_high[0] if model_high else None
            sampling = sample_settings(values, links["sample_positive"], links["sample_negative"], links["sample_vae"])
            result = run_training(model[0], data, values, getattr(cls.hidden, "unique_id", None), high, sampling)
            losses = {"loss": result.losses}
            ui = {"text": [result.summary]}
            outputs = (result.model, result.lora, losses, result.image, result.path, result.samples)
            return io.NodeOutput(*outputs, ui=ui)

        return run_guarded(work)


class SaveAdapter(io.ComfyNode):
    """Save a LORA_MODEL with full musubi metadata in a chosen key format."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="HadaKronSaveAdapter",
            display_name="Save Adapter",
            category="HadaKron/train",
            description="Writes a LORA_MODEL (from this pack's or ComfyUI's trainer) to the loras folder with "
            "ss_*/modelspec/hash metadata (core SaveLoRA writes none).",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                io.LoraModel.Input("lora", tooltip="Adapter tensors from a trainer node."),
                io.Model.Input("model", optional=True, tooltip="The model it was trained on (family, names)."),
                io.String.Input("output_name", default="hadakron_adapter", tooltip=_help("output_name")),
                io.Combo.Input("key_format", options=list(KEY_FORMATS), default="musubi", tooltip=KEY_FORMAT_HELP),
                _combo("save_precision", SAVE_PRECISIONS, "fp32"),
                io.Int.Input("steps", default=0, min=0, max=10_000_000, tooltip="Steps trained (ss_steps)."),
                _bool("overwrite", False),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The saved file.")],
        )

    @classmethod
    def execute(cls, lora, output_name, key_format, save_precision, steps, overwrite, model=None) -> io.NodeOutput:
        def work():
            family = model_family(model.model) if model is not None else None
            path = save_lora_model(lora, family, output_name, key_format, save_precision, steps, overwrite)
            return io.NodeOutput(str(path), ui={"text": [str(path)]})

        return run_guarded(work)


def save_lora_model(lora, family, output_name, key_format, save_precision, steps, overwrite):
    """Convert, describe and write a LORA_MODEL; returns the path."""
    info = describe(lora)
    config = TrainConfig(**info, family=family or "", output_name=output_name, key_format=key_format)
    config.save_precision, config.steps = save_precision, max(1, int(steps))
    tensors = convert_state_dict(lora, family, key_format, save_dtype(save_precision))
    if info["algo"] == "lokr" and key_format == "musubi":  # comfy format: metadata only (no unused-key warning)
        tensors.setdefault("lokr_factor", torch.tensor(int(info["factor"]), dtype=torch.int64))
    names = output_names(folder_paths.get_folder_paths("loras")[0], output_name)
    metadata = full_metadata(config, RunInfo(total_steps=int(steps)), int(steps), 0, tensors)
    return save_adapter_file(names.final(), tensors, metadata, overwrite)


NODES = [TrainAdapter, SaveAdapter]
__all__ = ["NODES", "SaveAdapter", "TrainAdapter", "training_history"]
