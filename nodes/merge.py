"""Nodes: Merge Adapter into Model (``HadaKronMergeIntoModel``) and Save Merged Model (``HadaKronSaveMergedModel``).

Merging stays lazy: the merge node returns a MODEL clone holding every adapter's patches, so
ComfyUI bakes them once at load and never touches weights other clones share. The save node
writes the baked diffusion-model weights key by key (ComfyUI's own ``calculate_weight`` on an
fp32 copy of one weight at a time, rounded back like the patcher does), so the model never sits
in memory twice.
"""

from __future__ import annotations

import os

import comfy.float
import comfy.lora
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from .. import __version__
from ..adapters import CONVENTIONS, apply_to_weight
from ..common.errors import OutputExistsError, UnsupportedError
from ..common.paths import sanitize_output_name
from ..common.tensor_files import DTYPE_TO_ST, write_safetensors_streaming
from ..loading import parse_block_strengths
from ._comfy import io, schema
from .apply import ApplyRequest, apply_adapter
from .guard import adapter_path, run_guarded
from .load import CONVENTION_HELP, adapter_inputs
from .patches import BypassForward

SLOTS = 4
NONE = "None"
PREFIX = "diffusion_model."
DEFAULT_PREFIX = "hadakron/merged_model"
# The patcher's key -> rounding seed (comfy.model_patcher in 0.3.75; feature-detected, it may move).
_string_to_seed = getattr(comfy.model_patcher, "string_to_seed", None) or comfy.utils.string_to_seed


def _tooltips() -> dict[str, str]:
    return {inp.id: inp.tooltip for inp in adapter_inputs()}


def slot_inputs(slot: int) -> list:
    """Inputs of adapter slot ``slot`` (1-based); slots after the first are optional ("None" = empty)."""
    tips, optional = _tooltips(), slot > 1
    names = folder_paths.get_filename_list("loras")
    empty_note = " 'None' leaves this slot empty." if optional else ""
    return [
        io.Combo.Input(
            f"adapter_{slot}",
            options=[NONE, *names] if optional else names,
            default=NONE if optional else None,
            optional=optional,
            tooltip=f"Adapter {slot}, applied after the ones above it. " + tips["adapter_name"] + empty_note,
        ),
        io.Float.Input(
            f"strength_{slot}",
            default=1.0,
            min=-100.0,
            max=100.0,
            step=0.01,
            optional=optional,
            tooltip=f"Adapter {slot}: " + tips["strength_model"],
        ),
        io.Combo.Input(
            f"convention_{slot}",
            options=list(CONVENTIONS),
            default="auto",
            optional=optional,
            tooltip=f"Adapter {slot}: " + CONVENTION_HELP,
        ),
        io.String.Input(
            f"block_strengths_{slot}", default="", optional=True, tooltip=f"Adapter {slot}: " + tips["block_strengths"]
        ),
    ]


def slot_requests(values: dict) -> list[tuple[str, ApplyRequest]]:
    """``(adapter name, request)`` for every filled slot, in slot order."""
    requests = []
    for slot in range(1, SLOTS + 1):
        name = values.get(f"adapter_{slot}")
        if not name or name == NONE:
            continue
        request = ApplyRequest(
            path=adapter_path(name),
            strength_model=float(values.get(f"strength_{slot}", 1.0)),
            convention=values.get(f"convention_{slot}", "auto"),
            block_strengths=parse_block_strengths(values.get(f"block_strengths_{slot}", "")),
        )
        requests.append((name, request))
    return requests


def merge_into_model(model, requests: list[tuple[str, ApplyRequest]]) -> tuple[object, str]:
    """Apply each adapter in order on successive clones; returns the last clone and the report text."""
    sections = []
    for index, (name, request) in enumerate(requests, start=1):
        model, _, report = apply_adapter(model, None, request)
        sections.append(f"[{index}] {name} (strength {request.strength_model:g})\n{report.render()}")
    header = f"Merged {len(requests)} adapter(s) into the model as lazy patches ({len(model.patches)} weights)."
    return model, "\n\n".join([header, *sections])


class MergeIntoModel(io.ComfyNode):
    """Apply up to four adapters, each with its own strength, convention and block strengths."""

    @classmethod
    def define_schema(cls):
        inputs = [io.Model.Input("model", tooltip="Diffusion model to merge into (a patched clone is returned).")]
        for slot in range(1, SLOTS + 1):
            inputs += slot_inputs(slot)
        return schema(
            node_id="HadaKronMergeIntoModel",
            display_name="Merge Adapter into Model",
            category="HadaKron/merge",
            description="Applies up to four LoRA/LoHa/LoKr adapters in order and returns a model clone whose "
            "patches hold the combined result; ComfyUI bakes it once at load, and Save Merged Model or the "
            "core save nodes write baked weights. The input model is never modified.",
            inputs=inputs,
            outputs=[io.Model.Output(display_name="MODEL"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, **values) -> io.NodeOutput:
        def work():
            merged, text = merge_into_model(model, slot_requests(values))
            return io.NodeOutput(merged, text, ui={"text": [text]})

        return run_guarded(work)


# --- saving ------------------------------------------------------------------------------------


def original_weight(model_patcher, key: str, current: torch.Tensor) -> torch.Tensor:
    """The unpatched weight: the patcher's backup while a (shared) clone is loaded with patches applied."""
    backup = model_patcher.backup.get(key)
    return backup.weight if backup is not None else current


def bypass_items(model_patcher) -> dict[str, list]:
    """``{weight key: [(adapter, coeff, offset), …]}`` of adapters loaded in bypass mode."""
    items = {}
    for name, patch in model_patcher.object_patches.items():
        if isinstance(patch, BypassForward) and name.endswith(".forward"):
            items[name[: -len(".forward")] + ".weight"] = list(patch.items)
    return items


def baked_weight(model_patcher, key: str, weight: torch.Tensor, bypass: list) -> torch.Tensor:
    """``key``'s weight with its patches (and bypass adapters) applied, in its storage dtype."""
    _, set_func, convert_func = comfy.model_patcher.get_key_weight(model_patcher.model, key)
    work = weight.to(torch.float32, copy=True)
    if convert_func is not None:
        work = convert_func(work, inplace=True)
    work = comfy.lora.calculate_weight(model_patcher.patches.get(key, []), work, key)
    for adapter, coeff, offset in bypass:
        apply_to_weight(adapter, work if offset is None else work.narrow(*offset), coeff, 1.0)
    seed = _string_to_seed(key)
    if set_func is None:
        return comfy.float.stochastic_rounding(work, weight.dtype, seed=seed)
    return _plain(set_func(work, seed=seed, return_weight=True), key)


def _plain(tensor, key: str) -> torch.Tensor:
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.dtype not in DTYPE_TO_ST:
        raise UnsupportedError(
            f"{key} is a quantised weight ({type(tensor).__name__}, {tensor.dtype}) that cannot be written as "
            "safetensors; load the adapter with apply_mode=bypass and keep the model as it is"
        )
    return tensor


def save_baked(model_patcher, path: str, metadata: dict[str, str]) -> int:
    """Stream the baked diffusion-model weights (keys without prefix, as UNETLoader reads them) to ``path``."""
    state = model_patcher.model.diffusion_model.state_dict()
    bypass = bypass_items(model_patcher)
    specs = [(k, _plain(v, PREFIX + k).dtype, tuple(v.shape)) for k, v in state.items()]

    def produce(name: str) -> torch.Tensor:
        key = PREFIX + name
        weight = original_weight(model_patcher, key, state[name])
        if key not in model_patcher.patches and key not in bypass:
            return weight.detach()
        return baked_weight(model_patcher, key, weight, bypass.get(key, []))

    write_safetensors_streaming(path, specs, produce, metadata)
    return sum(1 for name in state if PREFIX + name in model_patcher.patches or PREFIX + name in bypass)


def output_slot(filename_prefix: str) -> tuple[str, str, int]:
    """``(folder, file name, first free counter)`` in ComfyUI's output folder (its save nodes' scheme)."""
    prefix = sanitize_output_name(filename_prefix, DEFAULT_PREFIX)
    folder, filename, counter, _, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    return folder, filename, counter


def save_to_output(model_patcher, filename_prefix: str) -> tuple[str, int]:
    """Write the baked model under the output folder without clobbering; returns (path, patched keys)."""
    folder, filename, counter = output_slot(filename_prefix)
    metadata = {"hadakron.producer": f"hadakron {__version__}", "hadakron.baked": "ComfyUI Save Merged Model"}
    while True:
        path = os.path.join(folder, f"{filename}_{counter:05}_.safetensors")
        try:
            return path, save_baked(model_patcher, path, metadata)
        except OutputExistsError:
            counter += 1  # another save took this name meanwhile


class SaveMergedModel(io.ComfyNode):
    """Write a (patched) MODEL's baked diffusion-model weights to ComfyUI's output folder."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="HadaKronSaveMergedModel",
            display_name="Save Merged Model",
            category="HadaKron/merge",
            description="Bakes every patch of the model into its diffusion-model weights and saves them as "
            "safetensors (UNETLoader format) in the output folder, one weight at a time.",
            inputs=[
                io.Model.Input("model", tooltip="Model to save, usually the output of Merge Adapter into Model."),
                io.String.Input(
                    "filename_prefix",
                    default=DEFAULT_PREFIX,
                    tooltip="Name inside ComfyUI's output folder (sub-folders allowed); a counter is appended "
                    "so existing files are never overwritten.",
                ),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix=DEFAULT_PREFIX) -> io.NodeOutput:
        def work():
            path, patched = save_to_output(model, filename_prefix)
            text = f"saved {path} ({patched} baked weights)"
            return io.NodeOutput(path, ui={"text": [text]})

        return run_guarded(work)


NODES = [MergeIntoModel, SaveMergedModel]
