"""Helpers for the reference suite (tests/test_reference_*.py): real producers against HadaKron.

Each producer library builds its adapter on a *plain torch mirror* of a tiny ComfyUI model (same
module names, shapes, container class names and base weights), saves it with its own code, and
gives its reference result (module forward or merge). HadaKron's loader node then loads the file
onto the real ComfyUI model; ``patched(mp, key)`` is what ComfyUI bakes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loader_helpers import base, patched

TOL = 1e-5  # fp32 relative error the suite allows against every producer
_CONV = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}
_CONV_FN = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def import_lycoris():
    """``lycoris`` with its pure-torch kernels (spec §18: set before any LyCORIS op runs)."""
    os.environ["LYCORIS_KERNEL_BACKEND"] = "torch"
    import lycoris
    import lycoris.kohya  # noqa: F401  (the kohya entry, ``lycoris.kohya.create_network``)

    return lycoris


def loras_dir(comfy) -> Path:
    return Path(comfy.folder_paths.get_folder_paths("loras")[0])


def copy_into_loras(comfy, src: Path, subdir: str) -> str:
    """Copy a file into ComfyUI's loras folder; returns its name relative to that folder."""
    target = loras_dir(comfy) / subdir / src.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return f"{subdir}/{src.name}"


def load(comfy, mp, adapter_name: str, strength: float = 1.0, **kw):
    """Run the ``HadaKronLoadAdapter`` node; returns ``(patched model, report text)``."""
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        out = node.execute(model=mp, adapter_name=adapter_name, strength_model=strength, convention="auto", **kw)
    model, _, report = out.result
    assert "UNMATCHED" not in report and "SHAPE MISMATCH" not in report, report
    return model, report


def delta(model, mp, key: str) -> torch.Tensor:
    """ΔW HadaKron applied to ``key``: patched weight minus the untouched base."""
    return patched(model, key) - base(mp, key)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative Frobenius error ``|got - want| / |want|`` in float64."""
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm())


# ---------------------------------------------------------------------------------------------
# Plain torch mirrors of ComfyUI models


def _container(classes: dict, name: str) -> nn.Module:
    if name not in classes:
        classes[name] = type(name, (nn.Module,), {})
    return classes[name]()


def _plain_layer(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.Linear):
        layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        layer = _CONV[module.weight.dim()](
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
        )
    else:
        return None
    with torch.no_grad():
        layer.weight.copy_(module.weight.float())
        if module.bias is not None:
            layer.bias.copy_(module.bias.float())
    return layer


def mirror_tree(source: nn.Module) -> nn.Module:
    """A plain torch tree with ``source``'s module names, Linear/Conv shapes and weights.

    Containers get classes named like the originals (``WanAttentionBlock`` …) because LyCORIS'
    kohya entry and musubi pick their targets by class name. Norms and activations are left out.
    """
    classes: dict[str, type] = {}
    built = {"": _container(classes, type(source).__name__)}
    for name, module in source.named_modules():
        parent_name, _, leaf = name.rpartition(".")
        if not name or parent_name not in built:
            continue
        layer = _plain_layer(module)
        if layer is None and any(True for _ in module.children()):
            layer = _container(classes, type(module).__name__)
        if layer is not None:
            built[parent_name].add_module(leaf, layer)
            built[name] = layer
    return built[""]


def module_paths(tree: nn.Module) -> dict[int, str]:
    """``id(module) -> dotted path`` for every module of ``tree``."""
    return {id(m): n for n, m in tree.named_modules()}


@torch.no_grad()
def randomize_(named_params, seed: int, std: float) -> None:
    """Overwrite parameters (sorted by name) with seeded N(0, std²); producers zero-init a factor."""
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(named_params, key=lambda kv: kv[0]):
        param.copy_(torch.randn(param.shape, generator=gen) * std)


def probe_input(layer: nn.Module, gen: torch.Generator) -> torch.Tensor:
    """A random input batch for a Linear (3 tokens) or a Conv (one small sample)."""
    if isinstance(layer, nn.Linear):
        return torch.randn(3, layer.in_features, generator=gen)
    spatial = [k * s * 2 for k, s in zip(layer.kernel_size, layer.stride, strict=True)]
    return torch.randn(1, layer.in_channels, *spatial, generator=gen)


def layer_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``layer``'s own operation with another weight (and optional bias)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    fn = _CONV_FN[weight.dim()]
    return fn(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


@torch.no_grad()
def zeroed(mp):
    """Zero every diffusion-model parameter in place: the patched weight is then exactly ΔW.

    Use it when a producer's ΔW is much smaller than the base weights (``patched - base`` would lose
    more than ``TOL`` to cancellation). Returns ``mp``.
    """
    for param in mp.model.diffusion_model.parameters():
        param.zero_()
    return mp


def zimage_model(dim: int = 256, ffn_multiplier: float = 2.0, seed: int = 0):
    """A ComfyUI Lumina2/Z-Image model (1 layer, fused qkv) sized like musubi's Z-Image fixtures.

    ``dim`` 256 with ``ffn_dim_multiplier`` 2.0 gives ``feed_forward.w1/w3`` 256→512, as in
    tests/fixtures/musubi (PROVENANCE.md). Returns a CPU fp32 ``ModelPatcher``.
    """
    import comfy.model_patcher
    import comfy.supported_models

    from tiny_models import fill_deterministic, tiny_config

    cls_name, cfg = tiny_config("zimage")
    cfg.update(dim=dim, ffn_dim_multiplier=ffn_multiplier, n_heads=dim // sum(cfg["axes_dims"]))
    cfg["n_kv_heads"] = cfg["n_heads"]
    model_config = getattr(comfy.supported_models, cls_name)(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    fill_deterministic(model.diffusion_model, seed)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
