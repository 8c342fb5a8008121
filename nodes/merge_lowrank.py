"""Nodes: Merge Adapters, Convert LoHa/LoKr to LoRA, Resize LoRA rank (category HadaKron/merge).

Thin glue over :mod:`hadakron.merge.combine`: inputs come from ComfyUI's ``loras`` folders, the
result is written into the first ``loras`` folder under a new name (an existing file is never
replaced: a numeric suffix is added) and the node returns the written path and a report.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths

from ..adapters import CONVENTIONS
from ..common.errors import OutputExistsError
from ..common.paths import resolve_inside, sanitize_output_name
from ..loading import read_adapter
from ..merge.combine import MODES, combine_adapters, resize_lora, save_result, to_lora
from ._comfy import io
from .file_node import file_node_schema
from .guard import adapter_path, run_guarded
from .load import CONVENTION_HELP

CATEGORY = "HadaKron/merge"
NONE = "none"
MAX_INPUTS = 4
MAX_SUFFIX = 100000


def _lora_names() -> list[str]:
    return folder_paths.get_filename_list("loras")


def _target_inputs(default_rank: int) -> list:
    """``rank`` and ``energy`` (0 = not used; both 0 in svd mode = lossless)."""
    return [
        io.Int.Input(
            "rank",
            default=default_rank,
            min=0,
            max=4096,
            tooltip="Target LoRA rank per layer (0: no rank limit). With energy set too, rank caps the energy rule.",
        ),
        io.Float.Input(
            "energy",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.0001,
            tooltip="Keep the smallest rank whose singular values hold this share of the layer's energy "
            "(Σσ²), e.g. 0.9999; 0: not used.",
        ),
    ]


def _output_input(default: str) -> io.String.Input:
    return io.String.Input(
        "output_name",
        default=default,
        tooltip="File name inside the first loras folder (sub-folders allowed); an existing file is never "
        "replaced, a number is added instead.",
    )


def _targets(rank: int, energy: float) -> tuple[int | None, float | None]:
    return (rank if rank > 0 else None), (energy if energy > 0 else None)


def output_path(name: str) -> Path:
    """A new ``.safetensors`` path inside the first loras folder (numbered if the name is taken)."""
    root = folder_paths.get_folder_paths("loras")[0]
    relative = sanitize_output_name(name, "hadakron_merged")
    if not relative.lower().endswith(".safetensors"):
        relative += ".safetensors"
    stem = relative[: -len(".safetensors")]
    for index in range(MAX_SUFFIX):
        candidate = relative if index == 0 else f"{stem}_{index:05d}.safetensors"
        path = resolve_inside(candidate, [root], must_exist=False)
        if not path.exists():
            return path
    raise OutputExistsError("no free file name left", path=str(Path(root) / relative))


def _save(result, name: str) -> io.NodeOutput:
    path = save_result(result, output_path(name))
    text = f"{result.render()}\nwrote {path}"
    return io.NodeOutput(str(path), text, ui={"text": [text]})


class CombineAdapters(io.ComfyNode):
    """Weighted sum of up to four adapter files as one adapter file."""

    @classmethod
    def define_schema(cls):
        inputs = []
        for i in range(1, MAX_INPUTS + 1):
            options = _lora_names() if i == 1 else [NONE, *_lora_names()]
            inputs.append(
                io.Combo.Input(
                    f"adapter_{i}",
                    options=options,
                    default=options[0] if options else None,
                    tooltip=f"Adapter file {i} (LoRA, LoHa, LoKr or hybrid; all for the same model family)"
                    + (f"; '{NONE}' skips it." if i > 1 else "."),
                )
            )
            inputs.append(
                io.Float.Input(
                    f"weight_{i}",
                    default=1.0,
                    min=-100.0,
                    max=100.0,
                    step=0.01,
                    tooltip=f"Multiplier on adapter {i}'s ΔW in the sum (0 drops it).",
                )
            )
        inputs += [
            io.Combo.Input(
                "mode",
                options=list(MODES),
                default="exact",
                tooltip="exact: keep the sum exactly (concatenated LoRA factors where exact, otherwise full diffs). "
                "svd: re-factorise every layer to LoRA at the rank/energy below, optimally.",
            ),
            *_target_inputs(default_rank=32),
            io.Combo.Input("convention", options=list(CONVENTIONS), default="auto", tooltip=CONVENTION_HELP),
            _output_input("merged/hadakron_merged"),
        ]
        return file_node_schema(
            node_id="HadaKronCombineAdapters",
            display_name="Merge Adapters",
            category=CATEGORY,
            description="Sums LoRA/LoHa/LoKr files into one adapter file and reports the kept energy and relative "
            "error per layer and overall.",
            inputs=inputs,
        )

    @classmethod
    def execute(cls, mode="exact", rank=32, energy=0.0, convention="auto", output_name="", **kwargs) -> io.NodeOutput:
        def work():
            names = [kwargs.get(f"adapter_{i}", NONE) for i in range(1, MAX_INPUTS + 1)]
            weights = [float(kwargs.get(f"weight_{i}", 1.0)) for i in range(1, MAX_INPUTS + 1)]
            chosen = [(n, w) for n, w in zip(names, weights, strict=True) if n and n != NONE]
            sources = [read_adapter(adapter_path(n), convention) for n, _ in chosen]
            r, e = _targets(rank, energy) if mode == "svd" else (None, None)
            result = combine_adapters(sources, [w for _, w in chosen], mode, r, e)
            return _save(result, output_name)

        return run_guarded(work)


class _SingleAdapterNode(io.ComfyNode):
    """One adapter file in, one LoRA file out at a rank/energy: the subclasses set the text and :meth:`transform`."""

    NODE_ID = DISPLAY_NAME = DESCRIPTION = ADAPTER_TOOLTIP = DEFAULT_OUTPUT = ""
    DEFAULT_RANK = 32

    @staticmethod
    def transform(source, rank, energy):
        raise NotImplementedError

    @classmethod
    def define_schema(cls):
        return file_node_schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.DESCRIPTION,
            inputs=[
                io.Combo.Input("adapter_name", options=_lora_names(), tooltip=cls.ADAPTER_TOOLTIP),
                *_target_inputs(default_rank=cls.DEFAULT_RANK),
                io.Combo.Input("convention", options=list(CONVENTIONS), default="auto", tooltip=CONVENTION_HELP),
                _output_input(cls.DEFAULT_OUTPUT),
            ],
        )

    @classmethod
    def execute(cls, adapter_name, rank=None, energy=0.0, convention="auto", output_name="") -> io.NodeOutput:
        def work():
            source = read_adapter(adapter_path(adapter_name), convention)
            r, e = _targets(cls.DEFAULT_RANK if rank is None else rank, energy)
            return _save(cls.transform(source, r, e), output_name)

        return run_guarded(work)


class ToLoRA(_SingleAdapterNode):
    """LoHa/LoKr (or hybrid) to LoRA, optimally per layer."""

    NODE_ID = "HadaKronToLoRA"
    DISPLAY_NAME = "Convert LoHa/LoKr to LoRA"
    DESCRIPTION = (
        "LoHa via its exact rank r1·r2 form, LoKr via the SVDs of its two factors (no dense SVD); "
        "truncated to the rank/energy with the optimal error, which is reported."
    )
    ADAPTER_TOOLTIP = "LoHa/LoKr file from the loras folders."
    DEFAULT_RANK = 32
    DEFAULT_OUTPUT = "converted/hadakron_lora"
    transform = staticmethod(to_lora)


class ResizeLoRA(_SingleAdapterNode):
    """Change a LoRA's rank (optimal truncation per layer)."""

    NODE_ID = "HadaKronResizeLoRA"
    DISPLAY_NAME = "Resize LoRA rank"
    DESCRIPTION = "Thin QR of up/downᵀ and an SVD of the small core per layer; reports kept energy and error."
    ADAPTER_TOOLTIP = "LoRA file from the loras folders."
    DEFAULT_RANK = 16
    DEFAULT_OUTPUT = "resized/hadakron_lora"
    transform = staticmethod(resize_lora)


NODES = [CombineAdapters, ToLoRA, ResizeLoRA]
