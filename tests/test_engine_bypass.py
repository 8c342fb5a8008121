"""The non-materialising forward equals the dense ΔW path, outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from engine_cases import LAYERS, loha_case, lokr_case, lora_case
from hadakron.adapters import ModuleAdapter, bypass_forward

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def make(algo, shape, gen):
    return {
        "lora": lambda: lora_case(shape, gen=gen),
        "loha": lambda: loha_case(shape, gen=gen),
        "loha_r8": lambda: loha_case(shape, rank=8, gen=gen),
        "lokr": lambda: lokr_case(shape, "lowrank", gen=gen),
        "lokr_full": lambda: lokr_case(shape, "full", gen=gen),
        "lokr_both": lambda: lokr_case(shape, "both", gen=gen),
    }[algo]()


def params_of(weights):
    return [v for v in vars(weights).values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("algo", ["lora", "loha", "loha_r8", "lokr", "lokr_full", "lokr_both"])
def test_linear_bypass_equals_dense_with_gradients(algo, dtype):
    shape = LAYERS["linear"]
    g = torch.Generator().manual_seed(11)
    weights = make(algo, shape, g)
    for p in params_of(weights):
        p.data = p.data.to(dtype)
        p.requires_grad_(True)
    adapter = ModuleAdapter("m", weights)
    x = torch.randn(2, 5, shape[1], generator=g).to(dtype).requires_grad_(True)
    y = bypass_forward(adapter, x, shape)
    grad_out = torch.randn(y.shape, generator=g).to(dtype)
    grads = torch.autograd.grad(y, [x, *params_of(weights)], grad_out)
    y_ref = F.linear(x, adapter.weights.delta(shape))
    grads_ref = torch.autograd.grad(y_ref, [x, *params_of(weights)], grad_out)
    tol = TOL[dtype]
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol * 10)
    for got, ref in zip(grads, grads_ref, strict=True):
        scale = ref.float().abs().max().clamp_min(1.0)
        torch.testing.assert_close(got.float() / scale, ref.float() / scale, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("layer", ["conv1d", "conv2d", "conv3d"])
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "lokr_full"])
def test_conv_bypass_equals_dense(layer, algo):
    shape = LAYERS[layer]
    g = torch.Generator().manual_seed(12)
    adapter = ModuleAdapter("m", make(algo, shape, g))
    x = torch.randn(2, shape[1], *([7] * (len(shape) - 2)), generator=g)
    kwargs = {"stride": 1, "padding": 1}
    y = bypass_forward(adapter, x, shape, kwargs)
    ref = CONV[len(shape)](x, adapter.weights.delta(shape), **kwargs)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_lokr_bypass_never_builds_full_delta():
    """A 4096² LoKr forward allocates far less than one ΔW (16.8 M floats)."""
    shape = (4096, 4096)
    weights = lokr_case(shape, "full", gen=torch.Generator().manual_seed(0))
    adapter = ModuleAdapter("m", weights)
    x = torch.randn(4, shape[1])
    y = bypass_forward(adapter, x, shape)
    w1, w2 = weights.w1, weights.w2
    ref = (w1 @ x.reshape(4, w1.shape[1], -1) @ w2.t()).reshape(4, -1)
    torch.testing.assert_close(y, ref)
