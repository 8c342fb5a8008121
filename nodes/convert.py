"""Nodes: Convert Adapter Format, Convert Z-Image / HunyuanVideo 1.5 LoRA for ComfyUI.

Each reads an adapter from ComfyUI's ``loras`` folders and writes the converted file into the first
``loras`` folder (never over the input; over another file only when ``overwrite`` is on). They
return the written path (relative to that folder, so a loader can pick it) and the report.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths

from ..common.paths import resolve_inside, sanitize_output_name
from ..converters import (
    HV15_SPEC,
    TARGETS,
    ZIMAGE_SPEC,
    FormatOptions,
    QkvOptions,
    convert_file,
    convert_qkv_file,
)
from ..keymap.families import FAMILIES
from ._comfy import io
from .file_node import file_node_schema
from .guard import adapter_path, run_guarded

SUFFIX = ".safetensors"


def _input_combo() -> io.Combo.Input:
    return io.Combo.Input(
        "adapter_name",
        options=folder_paths.get_filename_list("loras"),
        tooltip="Adapter file from ComfyUI's loras folders (LoRA, LoHa, LoKr or hybrid).",
    )


def _output_inputs(default_hint: str) -> list:
    return [
        io.String.Input(
            "output_name",
            default="",
            tooltip=f"Name of the new file in the first loras folder (sub-folders allowed). Empty: the input's "
            f"name with '{default_hint}' appended.",
        ),
        io.Boolean.Input(
            "overwrite",
            default=False,
            tooltip="Replace an existing file of that name. The input file itself is never overwritten.",
        ),
    ]


def output_path(output_name: str, adapter_name: str, tag: str) -> tuple[Path, str]:
    """``(absolute path, name relative to the first loras folder)`` for the converted file."""
    root = folder_paths.get_folder_paths("loras")[0]
    stem = Path(adapter_name).with_suffix("").as_posix()
    name = sanitize_output_name(output_name.strip() or f"{stem}_{tag}", default=f"converted_{tag}")
    if not name.lower().endswith(SUFFIX):
        name += SUFFIX
    path = resolve_inside(name, [root], must_exist=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, name


def _finish(report, name: str) -> io.NodeOutput:
    text = report.render()
    return io.NodeOutput(name, text, ui={"text": [text]})


class ConvertFormat(io.ComfyNode):
    """Convert an adapter between key formats (musubi ``convert_lora.py`` and ComfyUI names)."""

    @classmethod
    def define_schema(cls):
        return file_node_schema(
            node_id="HadaKronConvertFormat",
            display_name="Convert Adapter Format",
            category="HadaKron/convert",
            description="Writes the adapter with another key format: default (sd-scripts/musubi lora_unet_), other "
            "(diffusers style, LoRA alpha folded) or comfy (names ComfyUI's own loader reads). Every LoHa/LoKr key "
            "and all metadata are kept; the effect is unchanged.",
            inputs=[
                _input_combo(),
                io.Combo.Input(
                    "target",
                    options=list(TARGETS),
                    default="comfy",
                    tooltip="default: lora_unet_ + underscores (sd-scripts/musubi). other: <prefix>.<dotted module>, "
                    "LoRA as lora_A/lora_B with alpha folded in. comfy: diffusion_model.<ComfyUI module> (loads "
                    "without HadaKron; HunyuanVideo 1.5 q/k/v are fused).",
                ),
                io.String.Input(
                    "diffusers_prefix",
                    default="diffusion_model",
                    tooltip="Key prefix for the 'other' target (musubi's --diffusers_prefix).",
                ),
                io.Combo.Input(
                    "family",
                    options=["auto", *FAMILIES],
                    default="auto",
                    tooltip="Model family whose module-name table recovers dotted names. auto: detect from the keys.",
                ),
                *_output_inputs("_<target>"),
            ],
        )

    @classmethod
    def execute(cls, adapter_name, target, diffusers_prefix, family, output_name, overwrite) -> io.NodeOutput:
        def work():
            source = adapter_path(adapter_name)
            path, name = output_path(output_name, adapter_name, target)
            options = FormatOptions(target, diffusers_prefix, None if family == "auto" else family)
            return _finish(convert_file(source, path, options, overwrite=overwrite), name)

        return run_guarded(work)


def _qkv_inputs() -> list:
    return [
        _input_combo(),
        io.Int.Input(
            "lokr_rank",
            default=0,
            min=0,
            max=65536,
            tooltip="LoRA rank for LoKr q/k/v (no single LoKr can represent the fused weight). 0: the smallest "
            "rank keeping 99.99% of the energy (musubi's rule). The report lists kept energy and error per layer.",
        ),
        io.Boolean.Input(
            "lossless",
            default=False,
            tooltip="Keep LoKr q/k/v split instead of converting them to LoRA: exact. HadaKron's loader applies "
            "them onto the fused weight (for Z-Image ComfyUI's own loader does too).",
        ),
        io.Boolean.Input(
            "reverse",
            default=False,
            tooltip="Split a ComfyUI file's fused qkv back into q/k/v (LoRA, LoHa exactly; LoKr when its w1 rows "
            "divide by 3, else as LoRA).",
        ),
        *_output_inputs("_comfy"),
    ]


class _QkvNode(io.ComfyNode):
    """A QKV conversion node: the subclasses differ only in :attr:`SPEC` and their schema's text."""

    SPEC = None
    NODE_ID = DISPLAY_NAME = DESCRIPTION = ""

    @classmethod
    def define_schema(cls):
        return file_node_schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category="HadaKron/convert",
            description=cls.DESCRIPTION,
            inputs=_qkv_inputs(),
        )

    @classmethod
    def execute(cls, adapter_name, lokr_rank, lossless, reverse, output_name, overwrite) -> io.NodeOutput:
        def work():
            source = adapter_path(adapter_name)
            path, name = output_path(output_name, adapter_name, "split" if reverse else "comfy")
            options = QkvOptions(lokr_rank=lokr_rank or None, lossless=lossless and not reverse, reverse=reverse)
            return _finish(convert_qkv_file(source, path, cls.SPEC, options, overwrite=overwrite), name)

        return run_guarded(work)


class ConvertZImageQKV(_QkvNode):
    """Z-Image: musubi/diffusers q/k/v names to ComfyUI's fused attention.qkv (and back)."""

    SPEC = ZIMAGE_SPEC
    NODE_ID = "HadaKronConvertZImageQKV"
    DISPLAY_NAME = "Convert Z-Image LoRA for ComfyUI"
    DESCRIPTION = (
        "Renames to ComfyUI's Z-Image names and fuses to_q/to_k/to_v into attention.qkv: LoRA and "
        "LoHa exactly, LoKr as the optimal LoRA (or kept split with 'lossless')."
    )


class ConvertHV15QKV(_QkvNode):
    """HunyuanVideo 1.5: musubi's split q/k/v and MLP/modulation names to ComfyUI's (and back)."""

    SPEC = HV15_SPEC
    NODE_ID = "HadaKronConvertHV15QKV"
    DISPLAY_NAME = "Convert HunyuanVideo 1.5 LoRA for ComfyUI"
    DESCRIPTION = (
        "Renames img_mlp_fc1/fc2, img_mod_linear (and txt) to ComfyUI's names and fuses "
        "img/txt q/k/v into qkv: LoRA and LoHa exactly, LoKr as the optimal LoRA (or kept split)."
    )


NODES = [ConvertFormat, ConvertZImageQKV, ConvertHV15QKV]
