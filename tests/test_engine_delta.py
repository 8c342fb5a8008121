"""ΔW of every algorithm and variant against closed forms and the LyCORIS 4.1.3 functional API."""

import os

import pytest
import torch

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")

from engine_cases import LAYERS, loha_case, lokr_case, lokr_closed_form, lora_case  # noqa: E402
from hadakron.adapters import ModuleAdapter, apply_to_weight, module_scale  # noqa: E402

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("tucker", [False, True])
def test_lora_delta_closed_form(layer, tucker):
    shape = LAYERS[layer]
    w = lora_case(shape, tucker=tucker, gen=gen())
    d = w.delta(shape)
    if w.mid is None:
        ref = (w.up.flatten(1) @ w.down.flatten(1)).reshape(shape)
    else:
        ref = torch.einsum("oa,ab...,bi->oi...", w.up.flatten(1), w.mid, w.down.flatten(1))
    torch.testing.assert_close(d, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("tucker", [False, True])
def test_loha_delta_closed_form(layer, tucker):
    shape = LAYERS[layer]
    w = loha_case(shape, tucker=tucker, gen=gen(1))
    d = w.delta(shape)
    if w.t1 is None:
        ref = ((w.w1a @ w.w1b) * (w.w2a @ w.w2b)).reshape(shape)
    else:
        h1 = torch.einsum("ij...,ip,jq->pq...", w.t1, w.w1a, w.w1b)
        h2 = torch.einsum("ij...,ip,jq->pq...", w.t2, w.w2a, w.w2b)
        ref = h1 * h2
    torch.testing.assert_close(d, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("variant", ["full", "lowrank", "both", "w1lowrank", "tucker"])
def test_lokr_delta_closed_form(layer, variant):
    shape = LAYERS[layer]
    w = lokr_case(shape, variant=variant, gen=gen(2))
    torch.testing.assert_close(w.delta(shape), lokr_closed_form(w, shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["linear", "conv2d"])
@pytest.mark.parametrize("variant", ["full", "lowrank", "both", "tucker"])
def test_lokr_matches_lycoris_functional(layer, variant):
    from lycoris.functional import lokr as ly

    shape = LAYERS[layer]
    w = lokr_case(shape, variant=variant, gen=gen(3))
    alpha = 2.0
    adapter = ModuleAdapter("m", w, alpha=alpha)
    ours = adapter.delta(shape) * module_scale(adapter, "lycoris")
    w2b = w.w2b
    if w2b is not None and w.t2 is None and len(shape) > 2:
        w2b = w2b.reshape(w2b.shape[0], shape[1] // w.w1_shape()[1], *shape[2:])
    if variant == "tucker":  # functional.lokr reads the rank from w2_a.shape[1] (= out_k for Tucker)
        ref = ly.kron_weight(w.w1, None, None, None, w.w2a, w2b, w.t2, scale=alpha / w.rank, backend="torch")
    else:
        ref = ly.diff_weight(w.w1, w.w1a, w.w1b, w.w2, w.w2a, w2b, w.t2, gamma=alpha, backend="torch")
    if variant == "full":  # LyCORIS forces alpha = dim for full-full LoKr: scale 1
        ref = ly.diff_weight(w.w1, None, None, w.w2, None, None, None, gamma=1.0, backend="torch")
    torch.testing.assert_close(ours, ref.reshape(shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["linear", "conv2d"])
@pytest.mark.parametrize("tucker", [False, True])
def test_loha_matches_lycoris_functional(layer, tucker):
    from lycoris.functional import loha as ly

    shape = LAYERS[layer]
    if tucker and layer == "linear":
        pytest.skip("Tucker needs a kernel")
    w = loha_case(shape, tucker=tucker, gen=gen(4))
    adapter = ModuleAdapter("m", w, alpha=3.0)
    gamma = module_scale(adapter, "lycoris")
    ours = adapter.delta(shape) * gamma
    b1, b2 = w.w1b, w.w2b
    if not tucker and len(shape) > 2:
        b1, b2 = b1.reshape(b1.shape[0], *shape[1:]), b2.reshape(b2.shape[0], *shape[1:])
    ref = ly.diff_weight(b1, w.w1a, b2, w.w2a, w.t1, w.t2, gamma=torch.tensor(gamma), backend="torch")
    torch.testing.assert_close(ours, ref.reshape(shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["linear", "conv2d"])
@pytest.mark.parametrize("tucker", [False, True])
def test_lora_matches_lycoris_functional(layer, tucker):
    from lycoris.functional import locon as ly

    shape = LAYERS[layer]
    w = lora_case(shape, tucker=tucker, gen=gen(5))
    adapter = ModuleAdapter("m", w, alpha=1.5)
    gamma = module_scale(adapter, "lycoris")
    ref = ly.diff_weight(w.down, w.up, w.mid, gamma=gamma, backend="torch")
    torch.testing.assert_close(adapter.delta(shape) * gamma, ref.reshape(shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "lokr_full"])
def test_inplace_apply_equals_dense_add(dtype, layer, algo):
    shape = LAYERS[layer]
    g = gen(6)
    w = {
        "lora": lambda: lora_case(shape, gen=g),
        "loha": lambda: loha_case(shape, gen=g),
        "lokr": lambda: lokr_case(shape, "lowrank", gen=g),
        "lokr_full": lambda: lokr_case(shape, "full", gen=g),
    }[algo]()
    adapter = ModuleAdapter("m", w, alpha=2.0)
    base = torch.randn(shape, generator=g).to(dtype)
    patched = apply_to_weight(adapter, base.clone(), strength=0.7, scale=0.5)
    ref = base.float() + 0.35 * adapter.delta(shape)
    torch.testing.assert_close(patched.float(), ref, rtol=TOL[dtype], atol=TOL[dtype] * 4)


def test_inplace_apply_on_row_slice_updates_parent():
    shape = (96, 80)
    w = lokr_case((32, 80), "lowrank", gen=gen(7))
    adapter = ModuleAdapter("m", w, alpha=None)
    fused = torch.randn(shape)
    parent = fused.clone()
    apply_to_weight(adapter, parent.narrow(0, 32, 32), 1.0, 1.0)
    torch.testing.assert_close(parent[32:64], fused[32:64] + w.delta((32, 80)))
    torch.testing.assert_close(parent[:32], fused[:32])
    torch.testing.assert_close(parent[64:], fused[64:])


def test_strength_zero_is_identity():
    shape = LAYERS["linear"]
    adapter = ModuleAdapter("m", lokr_case(shape, gen=gen(8)), alpha=4.0)
    base = torch.randn(shape)
    torch.testing.assert_close(apply_to_weight(adapter, base.clone(), 0.0, 1.0), base, rtol=0, atol=0)


def test_function_sees_scaled_delta():
    shape = LAYERS["linear"]
    adapter = ModuleAdapter("m", lora_case(shape, gen=gen(9)), alpha=None)
    base = torch.zeros(shape)
    out = apply_to_weight(adapter, base, 2.0, 1.0, function=lambda d: -d)
    torch.testing.assert_close(out, -2.0 * adapter.delta(shape))
