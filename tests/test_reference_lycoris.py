"""Reference: LyCORIS 4.1.3 (kohya entry and generic wrapper) vs HadaKron on the tiny ComfyUI WAN model.

LyCORIS builds LoCon/LoHa/LoKr on a plain torch mirror of the model, its parameters are randomised
(LyCORIS starts at ΔW = 0), it saves with its own ``save_weights``, and its module forward on a
random input is the reference: ``forward(x) - base(x)`` must equal ``x @ ΔW_hadakron.T``.
"""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from producers import (
    TOL,
    delta,
    import_lycoris,
    layer_op,
    load,
    loras_dir,
    mirror_tree,
    module_paths,
    probe_input,
    randomize_,
    rel_err,
)
from tiny_models import build_tiny

pytestmark = pytest.mark.comfy
STRENGTH = 0.8
DIM, ALPHA = 4, 2.0
STD = 0.5  # adapter entries ~0.5 make ΔW comparable to the base weights (no cancellation)

# (case id, algo, extra network args, rank)
CASES = [
    ("lora", "lora", {}, DIM),
    ("loha", "loha", {}, DIM),
    ("lokr", "lokr", {}, DIM),
    ("lokr_decompose_both", "lokr", {"decompose_both": True}, 2),
    ("lokr_full_matrix", "lokr", {"full_matrix": True}, DIM),
    ("lokr_factor4", "lokr", {"factor": 4}, DIM),
    ("lokr_factor4_decompose_both", "lokr", {"factor": 4, "decompose_both": True}, 1),
]
RS_LORA_CASES = [
    ("lora_rs_lora", "lora", {"rs_lora": True}, DIM),
    ("loha_rs_lora", "loha", {"rs_lora": True}, DIM),
    ("lokr_rs_lora", "lokr", {"rs_lora": True}, DIM),
    # full-full LoKr under rs_lora trains at γ = √dim and stores α = dim^1.5 (spec §7.1 corner case)
    ("lokr_full_matrix_rs_lora", "lokr", {"full_matrix": True, "rs_lora": True}, DIM),
    ("lokr_auto_full_rs_lora", "lokr", {"rs_lora": True}, 8),  # dim 8 >= max(w2 16×16)/2: full mode
]


@pytest.fixture(scope="module")
def wan(comfy):
    return build_tiny("wan21", seed=4)


def _kohya_network(tree, algo, args, rank):
    lycoris = import_lycoris()
    net = lycoris.kohya.create_network(STRENGTH, rank, ALPHA, None, None, tree, algo=algo, **args)
    net.apply_to(None, tree, apply_text_encoder=False, apply_unet=True)
    return net


def _generic_network(tree, algo, args, rank):
    lycoris = import_lycoris()
    net = lycoris.create_lycoris(tree, STRENGTH, rank, ALPHA, algo=algo, **args)
    net.apply_to()
    return net


def _trainer_metadata(algo, args, rank):
    """The ``ss_*`` keys sd-scripts writes for a ``--network_module lycoris.kohya`` run."""
    net_args = {"algo": algo, **{k: str(v) for k, v in args.items()}}
    return {
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(ALPHA),
        "ss_network_args": json.dumps(net_args),
    }


def _build(comfy, wan, entry, case):
    """Create, randomise and save a LyCORIS network; returns (network, mirror tree, file name)."""
    case_id, algo, args, rank = case
    tree = mirror_tree(wan.model.diffusion_model)
    if entry == "kohya":
        net = _kohya_network(tree, algo, args, rank)
        metadata = _trainer_metadata(algo, args, rank)
    else:
        net = _generic_network(tree, algo, args, rank)
        metadata = {}
    randomize_(net.named_parameters(), seed=zlib.crc32(case_id.encode()), std=STD)
    name = f"lycoris_ref/{entry}_{case_id}.safetensors"
    (loras_dir(comfy) / "lycoris_ref").mkdir(exist_ok=True)
    net.save_weights(str(loras_dir(comfy) / name), torch.float32, metadata)
    return net, tree, name


@torch.no_grad()
def _forward_errors(net, tree, model, wan) -> dict[str, float]:
    """Per adapted layer: relative error of HadaKron's Δoutput vs the LyCORIS module forward."""
    paths, gen, errors = module_paths(tree), torch.Generator().manual_seed(0), {}
    for lora in net.loras:
        layer = lora.org_module[0]
        key = f"diffusion_model.{paths[id(layer)]}.weight"
        x = probe_input(layer, gen)
        want = lora(x) - layer_op(layer, x, layer.weight, layer.bias)
        assert float(want.norm()) > 1e-2 * float(x.norm()), f"{key}: LyCORIS adapter has no effect"
        errors[key] = rel_err(layer_op(layer, x, delta(model, wan, key)), want)
    return errors


def _check(comfy, wan, entry, case, expected_modules):
    net, tree, name = _build(comfy, wan, entry, case)
    model, report = load(comfy, wan, name, STRENGTH)
    errors = _forward_errors(net, tree, model, wan)
    assert len(errors) == expected_modules, sorted(errors)
    assert set(model.patches) == set(errors), "HadaKron must patch exactly the modules LyCORIS adapted"
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst}: relative error {errors[worst]:.2e}\n{report}"
    return report


@pytest.mark.parametrize("case", CASES + RS_LORA_CASES, ids=lambda c: c[0])
def test_kohya_entry_matches_lycoris_forward(comfy, wan, case):
    report = _check(comfy, wan, "kohya", case, expected_modules=20)  # 2 WanAttentionBlocks × 10 Linears
    assert "convention: lycoris (LyCORIS kohya network" in report, report


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_generic_wrapper_matches_lycoris_forward(comfy, wan, case):
    # Every Linear and the Conv3d patch embedding (27 layers) under the ``lycoris_`` prefix.
    _check(comfy, wan, "generic", case, expected_modules=27)


def _functional_delta(lycoris, lora) -> torch.Tensor:
    """ΔW (scale included, no multiplier) from LyCORIS' functional API, as spec §18 prescribes."""
    if lora.name == "kron":
        weights = [getattr(lora, f"lokr_{p}", None) for p in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")]
        return lycoris.functional.lokr.diff_weight(*weights, gamma=ALPHA)
    gamma = torch.tensor(ALPHA / DIM)
    parts = [lora.hada_w1_b, lora.hada_w1_a, lora.hada_w2_b, lora.hada_w2_a, None, None]
    return lycoris.functional.loha.diff_weight(*parts, gamma=gamma)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
@torch.no_grad()
def test_functional_api_agrees_but_merge_applies_gamma_twice(comfy, wan, algo):
    """LyCORIS 4.1.3 ``get_diff_weight``/``merge_to`` scale LoHa/LoKr by (α/r)² (spec §18); its
    functional API and its forward scale once, like HadaKron. γ = 2/4 here, so merge_to is half."""
    lycoris = import_lycoris()
    net, tree, name = _build(comfy, wan, "kohya", (f"{algo}_gamma", algo, {}, DIM))
    model, _ = load(comfy, wan, name, 1.0)
    gamma, paths = ALPHA / DIM, module_paths(tree)
    for lora in net.loras[:4]:
        layer = lora.org_module[0]
        ours = delta(model, wan, f"diffusion_model.{paths[id(layer)]}.weight")
        assert rel_err(ours, _functional_delta(lycoris, lora)) <= TOL
        diff = lora.get_diff_weight(multiplier=1.0)[0]
        assert rel_err(diff, gamma * ours) <= TOL and rel_err(diff, ours) == pytest.approx(1 - gamma, abs=1e-6)
        before = layer.weight.clone()
        lora.merge_to(1.0)
        assert rel_err(layer.weight - before, gamma * ours) <= TOL
