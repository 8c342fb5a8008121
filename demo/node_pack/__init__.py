"""Test-only ComfyUI node pack (loaded by the test harness as custom_nodes/HadaKronTestNodes; never shipped).

Provides inputs that would otherwise need real text-encoder weights, and a latent probe for assertions.
"""

from __future__ import annotations

import json

import torch
from comfy_api.latest import ComfyExtension, io


class HadaKronTestSyntheticConditioning(io.ComfyNode):
    """CONDITIONING ``[[randn(1, length, dim), {}]]`` from a seeded generator (WAN's text width is 4096)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HadaKronTestSyntheticConditioning",
            display_name="HadaKron Demo Stand-in Conditioning (random, not a text encoder)",
            category="HadaKron demo (not shipped)",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Int.Input("length", default=8, min=1, max=4096),
                io.Int.Input("dim", default=4096, min=1, max=16384, optional=True),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed: int, length: int, dim: int = 4096) -> io.NodeOutput:
        gen = torch.Generator().manual_seed(seed)
        return io.NodeOutput([[torch.randn(1, length, dim, generator=gen), {}]])


class HadaKronTestLatentStats(io.ComfyNode):
    """Output node: shape/mean/std/finite of a LATENT as JSON text in its ``ui`` (read it from /history)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HadaKronTestLatentStats",
            display_name="HadaKron Test Latent Stats",
            category="HadaKron demo (not shipped)",
            inputs=[io.Latent.Input("samples")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, samples: dict) -> io.NodeOutput:
        x = samples["samples"].float()
        stats = {
            "shape": list(x.shape),
            "mean": x.mean().item(),
            "std": x.std().item() if x.numel() > 1 else 0.0,
            "finite": bool(torch.isfinite(x).all()),
        }
        return io.NodeOutput(ui={"text": [json.dumps(stats)]})


class HadaKronTestNodes(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [HadaKronTestSyntheticConditioning, HadaKronTestLatentStats]


async def comfy_entrypoint() -> HadaKronTestNodes:
    return HadaKronTestNodes()
