"""Node: Load LoHa/LoKr/LoRA (``HadaKronLoadAdapter``)."""

from __future__ import annotations

import folder_paths

from ..adapters import CONVENTIONS
from ..loading import parse_block_strengths
from ._comfy import io, schema
from .apply import ApplyRequest, apply_adapter
from .guard import adapter_path, run_guarded

CONVENTION_HELP = (
    "How alpha becomes a scale. auto: detect the producer from keys/metadata; lycoris: "
    "LyCORIS/ComfyUI/musubi (alpha/rank, full-matrix LoKr = 1); peft: alpha/r always; "
    "musubi_pr901: full-matrix LoKr alpha/max(w2); rs_lora: alpha/sqrt(rank)."
)


def adapter_inputs() -> list:
    """Inputs shared by the loader and the merge node (same names, same tooltips)."""
    return [
        io.Combo.Input(
            "adapter_name",
            options=folder_paths.get_filename_list("loras"),
            tooltip="Adapter file from ComfyUI's loras folders (LoRA, LoHa, LoKr or hybrid).",
        ),
        io.Float.Input(
            "strength_model",
            default=1.0,
            min=-100.0,
            max=100.0,
            step=0.01,
            tooltip="Multiplier on the adapter's effect on the diffusion model.",
        ),
        io.Combo.Input("convention", options=list(CONVENTIONS), default="auto", tooltip=CONVENTION_HELP),
        io.String.Input(
            "block_strengths",
            default="",
            optional=True,
            tooltip="Per-block strengths, e.g. '0-9:0.5, 10-39:1.0'. Blocks are numbered over the "
            "model's block lists in order (FLUX: double blocks, then single blocks).",
        ),
    ]


def _regex_input(name: str, tooltip: str) -> io.String.Input:
    """An optional module-name filter (a regular expression; empty: no filter)."""
    return io.String.Input(name, default="", optional=True, tooltip=tooltip)


class LoadAdapter(io.ComfyNode):
    """Load any producer's LoRA/LoHa/LoKr file exactly, with a load report."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="HadaKronLoadAdapter",
            display_name="Load LoHa/LoKr/LoRA",
            category="HadaKron/load",
            description="Applies a LoRA, LoHa, LoKr or hybrid file with its producer's semantics (musubi-tuner, "
            "LyCORIS, PEFT, ai-toolkit, SimpleTuner, OneTrainer, ComfyUI) and reports every module.",
            inputs=[
                io.Model.Input("model", tooltip="Diffusion model to patch (a patched clone is returned)."),
                io.Clip.Input("clip", optional=True, tooltip="Optional text encoder for the file's text-encoder keys."),
                *adapter_inputs(),
                io.Float.Input(
                    "strength_clip",
                    default=1.0,
                    min=-100.0,
                    max=100.0,
                    step=0.01,
                    tooltip="Multiplier on the adapter's effect on the text encoder.",
                ),
                io.Combo.Input(
                    "apply_mode",
                    options=["patch", "bypass"],
                    default="patch",
                    tooltip="patch: lazy weight patches (fast sampling). bypass: adds the adapter's "
                    "output in the forward without ever building ΔW (quantised/fp8 bases).",
                ),
                io.Boolean.Input(
                    "prefer_lycoris",
                    default=False,
                    tooltip="Compute every delta with the LyCORIS library (needs lycoris-lora).",
                ),
                _regex_input("include", "Regex: only modules whose ComfyUI name matches are applied."),
                _regex_input("exclude", "Regex: modules whose ComfyUI name matches are skipped."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        adapter_name,
        strength_model,
        convention,
        strength_clip=1.0,
        apply_mode="patch",
        prefer_lycoris=False,
        clip=None,
        include="",
        exclude="",
        block_strengths="",
    ) -> io.NodeOutput:
        def work():
            request = ApplyRequest(
                path=adapter_path(adapter_name),
                strength_model=strength_model,
                strength_clip=strength_clip,
                convention=convention,
                mode=apply_mode,
                prefer_lycoris=prefer_lycoris,
                include=include,
                exclude=exclude,
                block_strengths=parse_block_strengths(block_strengths),
            )
            new_model, new_clip, report = apply_adapter(model, clip, request)
            text = report.render()
            return io.NodeOutput(new_model, new_clip, text, ui={"text": [text]})

        return run_guarded(work)


NODES = [LoadAdapter]
