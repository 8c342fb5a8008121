"""Helpers for the converter tests: seeded factors, files, and the ΔW a file applies to a model.

``applied`` resolves every module of a file against a ``{model key: shape}`` dict with HadaKron's
loader (``keymap.KeyResolver`` + ``loading.plan_adapter``) and sums ``scale·ΔW`` per model key (row
slices for split q/k/v), so two files can be compared by what they do to a model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from hadakron.adapters import detect_convention, parse_adapter_state_dict
from hadakron.keymap import KeyResolver
from hadakron.loading import plan_adapter
from hadakron.loading.source import AdapterSource

FIXTURES = Path(__file__).parent / "fixtures" / "musubi"


def rand(*shape, gen) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.2


def lora(out: int, inp: int, rank: int, gen, alpha: float | None = None) -> dict[str, torch.Tensor]:
    parts = {".lora_up.weight": rand(out, rank, gen=gen), ".lora_down.weight": rand(rank, inp, gen=gen)}
    if alpha is not None:
        parts[".alpha"] = torch.tensor(float(alpha))
    return parts


def loha(out: int, inp: int, rank: int, gen, alpha: float | None = None) -> dict[str, torch.Tensor]:
    parts = {
        ".hada_w1_a": rand(out, rank, gen=gen),
        ".hada_w1_b": rand(rank, inp, gen=gen),
        ".hada_w2_a": rand(out, rank, gen=gen),
        ".hada_w2_b": rand(rank, inp, gen=gen),
    }
    if alpha is not None:
        parts[".alpha"] = torch.tensor(float(alpha))
    return parts


def lokr(
    w1: tuple[int, int], w2: tuple[int, int], rank: int | None, gen, alpha: float | None = None, w1_rank=None
) -> dict[str, torch.Tensor]:
    """LoKr factors: ``rank`` None gives a full w2; ``w1_rank`` a decomposed w1."""
    parts = {}
    if w1_rank:
        parts[".lokr_w1_a"], parts[".lokr_w1_b"] = rand(w1[0], w1_rank, gen=gen), rand(w1_rank, w1[1], gen=gen)
    else:
        parts[".lokr_w1"] = rand(*w1, gen=gen)
    if rank is None:
        parts[".lokr_w2"] = rand(*w2, gen=gen)
    else:
        parts[".lokr_w2_a"], parts[".lokr_w2_b"] = rand(w2[0], rank, gen=gen), rand(rank, w2[1], gen=gen)
    if alpha is not None:
        parts[".alpha"] = torch.tensor(float(alpha))
    return parts


def module(name: str, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name + suffix: tensor for suffix, tensor in parts.items()}


def write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def source_of(tensors: dict, metadata: dict | None = None, convention: str = "auto") -> AdapterSource:
    parsed = parse_adapter_state_dict(tensors, metadata or {})
    choice = detect_convention(tensors.keys(), metadata or {}, None, convention, parsed.globals)
    return AdapterSource("test", parsed, choice, "test")


def applied(tensors: dict, metadata: dict | None, shapes: dict, family: str) -> dict[str, torch.Tensor]:
    """``{model key: Σ scale·ΔW}`` (fp64) of a file applied at strength 1; asserts every module matched."""
    source = source_of(tensors, metadata)
    patches, report = plan_adapter(source, KeyResolver(shapes, family), strict_family=False)
    assert not report.unmatched and not report.shape_mismatched, (report.unmatched, report.shape_mismatched)
    out: dict[str, torch.Tensor] = {}
    for patch in patches:
        full = out.setdefault(patch.target.key, torch.zeros(shapes[patch.target.key], dtype=torch.float64))
        delta = patch.adapter.delta(KeyResolver(shapes, family).target_shape(patch.target), dtype=torch.float64)
        view = full if patch.target.offset is None else full.narrow(0, patch.target.offset[1], patch.target.offset[2])
        view += patch.scale * delta
    return out


def assert_same_effect(a: dict, b: dict, rtol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        scale = max(float(a[key].abs().max()), 1e-12)
        assert float((a[key] - b[key]).abs().max()) <= rtol * scale, key


def zimage_shapes(dim: int = 256, ffn: int = 512, layers: int = 1) -> dict[str, tuple]:
    """A Z-Image-like model with ComfyUI's fused ``attention.qkv``."""
    shapes = {}
    for i in range(layers):
        p = f"diffusion_model.layers.{i}."
        shapes.update(
            {
                p + "attention.qkv.weight": (3 * dim, dim),
                p + "attention.out.weight": (dim, dim),
                p + "feed_forward.w1.weight": (ffn, dim),
                p + "feed_forward.w2.weight": (dim, ffn),
                p + "feed_forward.w3.weight": (ffn, dim),
            }
        )
    return shapes


def hv15_shapes(dim: int = 128, mlp: int = 512) -> dict[str, tuple]:
    """A HunyuanVideo 1.5-like double block with ComfyUI's fused qkv."""
    shapes = {}
    for s in ("img", "txt"):
        p = f"diffusion_model.double_blocks.0.{s}_"
        shapes.update(
            {
                p + "attn.qkv.weight": (3 * dim, dim),
                p + "attn.proj.weight": (dim, dim),
                p + "mlp.0.weight": (mlp, dim),
                p + "mlp.2.weight": (dim, mlp),
                p + "mod.lin.weight": (6 * dim, dim),
            }
        )
    return shapes
