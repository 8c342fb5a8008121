"""Exact low-rank forms and Eckart–Young truncation (merge/lowrank.py) against dense references."""

from __future__ import annotations

import math

import pytest
import torch

from engine_cases import LAYERS, loha_case, lokr_case, lora_case
from hadakron.adapters import FullWeights, LoKrWeights, ModuleAdapter
from hadakron.common.errors import ConventionError, ShapeMismatchError
from hadakron.merge.lowrank import (
    LowRank,
    add,
    choose_rank,
    exact_lowrank,
    lokr_truncate,
    stack_rows,
    truncate,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _flat_delta(adapter, shape, dtype=torch.float32):
    return adapter.delta(shape, dtype=dtype).reshape(shape[0], -1)


CASES = [
    ("lora", "linear", {}),
    ("lora", "conv2d", {}),
    ("lora", "conv3d", {}),
    ("lora", "conv2d", {"tucker": True}),
    ("lora", "conv1d", {"tucker": True}),
    ("loha", "linear", {}),
    ("loha", "conv2d", {}),
    ("loha", "conv2d", {"tucker": True}),
    ("lokr", "linear", {"variant": "full"}),
    ("lokr", "linear", {"variant": "lowrank"}),
    ("lokr", "linear", {"variant": "both"}),
    ("lokr", "linear", {"variant": "w1lowrank"}),
    ("lokr", "conv2d", {"variant": "full"}),
    ("lokr", "conv2d", {"variant": "lowrank"}),
    ("lokr", "conv2d", {"variant": "tucker"}),
    ("lokr", "conv1d", {"variant": "lowrank"}),
    ("lokr", "conv3d", {"variant": "full"}),
]
MAKERS = {"lora": lora_case, "loha": loha_case, "lokr": lokr_case}


def _case(algo, layer, kwargs, seed=0):
    shape = LAYERS[layer]
    weights = MAKERS[algo](shape, gen=_gen(seed), **kwargs)
    return ModuleAdapter(name=f"{algo}_{layer}", weights=weights, alpha=None), shape


@pytest.mark.parametrize("algo,layer,kwargs", CASES)
def test_exact_lowrank_reproduces_scaled_delta(algo, layer, kwargs):
    adapter, shape = _case(algo, layer, kwargs)
    lr = exact_lowrank(adapter, shape, scale=0.7)
    assert lr.up.dtype == torch.float32
    assert _rel(lr.dense(), 0.7 * _flat_delta(adapter, shape)) < 1e-5


def test_exact_ranks():
    lora, shape = _case("lora", "linear", {})
    assert exact_lowrank(lora, shape).rank == 4
    loha, shape = _case("loha", "linear", {})
    assert exact_lowrank(loha, shape).rank == 16  # r1·r2
    lokr, shape = _case("lokr", "linear", {"variant": "lowrank"})  # w1 full (out_l × in_m), w2 rank 3
    w1_rank = min(lokr.weights.w1.shape)
    lr = exact_lowrank(lokr, shape)
    assert lr.rank == w1_rank * 3 and lr.orthogonal_up
    gram = lr.up.t() @ lr.up
    off = gram - torch.diag(torch.diagonal(gram))
    assert float(off.abs().max()) < 1e-5 * float(gram.abs().max())


def test_lokr_drops_zero_singular_values():
    w = LoKrWeights(w1=torch.tensor([[1.0, 2.0], [2.0, 4.0]]), w2=torch.randn(3, 5, generator=_gen()))
    adapter = ModuleAdapter("rank_deficient", w)
    lr = exact_lowrank(adapter, (6, 10))
    assert lr.rank == 3  # rank(w1) = 1
    assert _rel(lr.dense(), _flat_delta(adapter, (6, 10))) < 1e-5


def test_full_diff_and_shape_errors():
    diff = torch.randn(12, 30, generator=_gen())
    lr = exact_lowrank(ModuleAdapter("d", FullWeights(diff)), (12, 30), scale=2.0)
    assert _rel(lr.dense(), 2 * diff) < 1e-6
    for k in (1, 5):  # inner size = min(out, in): truncate takes the one-dense-SVD path
        optimum, _ = _dense_optimum(2 * diff.double(), k)
        result = truncate(lr, rank=k)
        assert result.rel_error == pytest.approx(optimum, rel=1e-5)
        assert _rel(result.lowrank.dense().double(), 2 * diff.double()) == pytest.approx(optimum, rel=1e-5)
    adapter, _ = _case("lora", "linear", {})
    with pytest.raises(ShapeMismatchError):
        exact_lowrank(adapter, (97, 80))


def _dense_optimum(dense, k):
    s = torch.linalg.svdvals(dense)
    return math.sqrt(float((s[k:] ** 2).sum() / (s**2).sum())), s


@pytest.mark.parametrize("algo,layer,kwargs", [CASES[0], CASES[3], CASES[5], CASES[7], CASES[9], CASES[14]])
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_truncate_matches_eckart_young(algo, layer, kwargs, rank):
    adapter, shape = _case(algo, layer, kwargs, seed=rank)
    lr = exact_lowrank(adapter, shape, dtype=torch.float64)
    dense = lr.dense()
    result = truncate(lr, rank=rank)
    optimum, s = _dense_optimum(dense, rank)
    k = min(rank, int((s > s[0] * 1e-12).sum()))
    assert result.rank == k
    achieved = _rel(result.lowrank.dense(), dense)
    assert achieved == pytest.approx(optimum, rel=1e-6, abs=1e-9)
    assert result.rel_error == pytest.approx(optimum, rel=1e-6, abs=1e-9)
    kept = float((s[:k] ** 2).sum() / (s**2).sum())
    assert result.kept_energy == pytest.approx(kept, rel=1e-9)
    assert result.rel_error == pytest.approx(math.sqrt(max(0.0, 1 - result.kept_energy)), abs=1e-6)


def test_truncate_fp32_error_close_to_optimum():
    adapter, shape = _case("loha", "linear", {}, seed=3)
    lr = exact_lowrank(adapter, shape)
    result = truncate(lr, rank=5)
    optimum, _ = _dense_optimum(lr.dense().double(), 5)
    assert _rel(result.lowrank.dense().double(), lr.dense().double()) == pytest.approx(optimum, rel=1e-4)


def test_truncate_split_is_balanced_and_exact_default():
    adapter, shape = _case("lora", "linear", {})
    lr = exact_lowrank(adapter, shape, dtype=torch.float64)
    result = truncate(lr)
    assert result.rank == 4 and result.rel_error == pytest.approx(0.0, abs=1e-7)
    up, down = result.lowrank.up, result.lowrank.down
    assert torch.allclose(up.norm(dim=0), down.norm(dim=1))  # U√S and √S·Vᵀ
    assert _rel(result.lowrank.dense(), lr.dense()) < 1e-10


def test_energy_rule_picks_smallest_k():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])  # σ² = 16, 4, 1, 0.25; total 21.25
    assert choose_rank(s, energy=16 / 21.25) == 1
    assert choose_rank(s, energy=16.01 / 21.25) == 2
    assert choose_rank(s, energy=20 / 21.25) == 2
    assert choose_rank(s, energy=0.98) == 3
    assert choose_rank(s, energy=0.99) == 4
    assert choose_rank(s, energy=1.0) == 4
    assert choose_rank(s, energy=0.99, rank=2) == 2
    assert choose_rank(s) == 4
    with pytest.raises(ConventionError):
        choose_rank(s, energy=1.5)
    with pytest.raises(ConventionError):
        choose_rank(s, rank=0)


def test_truncate_energy_matches_dense_spectrum():
    adapter, shape = _case("loha", "linear", {}, seed=5)
    lr = exact_lowrank(adapter, shape, dtype=torch.float64)
    s = torch.linalg.svdvals(lr.dense())
    cum = torch.cumsum(s**2, 0) / (s**2).sum()
    for energy in (0.5, 0.9, 0.99, 0.9999):
        expected = int((cum < energy).sum()) + 1
        result = truncate(lr, energy=energy)
        assert result.rank == expected
        assert result.kept_energy >= energy


def test_truncate_zero_delta():
    lr = LowRank(torch.zeros(6, 2), torch.randn(2, 5, generator=_gen()))
    result = truncate(lr, rank=2)
    assert result.rank == 0 and result.kept_energy == 1.0 and result.rel_error == 0.0
    assert result.lowrank.up.shape == (6, 0) and result.lowrank.down.shape == (0, 5)


@pytest.mark.parametrize("variant", ["full", "lowrank", "both", "tucker"])
@pytest.mark.parametrize("rank", [1, 4, 10])
def test_lokr_truncate_is_optimal(variant, rank):
    layer = "conv2d" if variant == "tucker" else "linear"
    adapter, shape = _case("lokr", layer, {"variant": variant}, seed=rank)
    dense = 1.5 * _flat_delta(adapter, shape, torch.float64)
    result = lokr_truncate(adapter, shape, scale=1.5, rank=rank, dtype=torch.float64)
    optimum, s = _dense_optimum(dense, rank)
    assert _rel(result.lowrank.dense(), dense) == pytest.approx(optimum, rel=1e-6, abs=1e-9)
    assert result.rel_error == pytest.approx(optimum, rel=1e-6, abs=1e-9)
    generic = truncate(exact_lowrank(adapter, shape, scale=1.5, dtype=torch.float64), rank=rank)
    assert generic.rel_error == pytest.approx(result.rel_error, rel=1e-6, abs=1e-9)


def test_lokr_truncate_negative_scale_and_energy():
    adapter, shape = _case("lokr", "linear", {"variant": "lowrank"}, seed=2)
    dense = -0.5 * _flat_delta(adapter, shape, torch.float64)
    exact = lokr_truncate(adapter, shape, scale=-0.5, dtype=torch.float64)
    assert _rel(exact.lowrank.dense(), dense) < 1e-10
    by_energy = lokr_truncate(adapter, shape, scale=-0.5, energy=0.9, dtype=torch.float64)
    generic = truncate(exact_lowrank(adapter, shape, scale=-0.5, dtype=torch.float64), energy=0.9)
    assert by_energy.rank == generic.rank and by_energy.kept_energy >= 0.9


def test_stack_rows_exact_and_keeps_orthogonality():
    parts, denses = [], []
    for seed, variant in enumerate(["lowrank", "full", "both"]):
        adapter, shape = _case("lokr", "linear", {"variant": variant}, seed=seed)
        parts.append(exact_lowrank(adapter, shape))
        denses.append(_flat_delta(adapter, shape))
    stacked = stack_rows(parts)
    assert stacked.orthogonal_up
    assert _rel(stacked.dense(), torch.cat(denses, 0)) < 1e-5
    mixed = stack_rows([parts[0], exact_lowrank(*_case("lora", "linear", {}))])
    assert not mixed.orthogonal_up
    reference = torch.cat(denses, 0).double()
    result = truncate(LowRank(stacked.up.double(), stacked.down.double(), True), rank=12)
    optimum, _ = _dense_optimum(reference, 12)
    assert result.rel_error == pytest.approx(optimum, rel=1e-5)
    assert _rel(result.lowrank.dense(), reference) == pytest.approx(optimum, rel=1e-5)


def test_add_weighted_exact_and_zero_weight_drops_term():
    (a, shape), (b, _), (c, _) = (_case(x, "linear", k, seed=i) for i, (x, _, k) in enumerate(CASES[::5][:3]))
    parts = [exact_lowrank(m, shape) for m in (a, b, c)]
    total = add(parts, [0.5, -1.0, 2.0])
    dense = 0.5 * _flat_delta(a, shape) - _flat_delta(b, shape) + 2 * _flat_delta(c, shape)
    assert _rel(total.dense(), dense) < 1e-5
    dropped = add(parts, [1.0, 0.0, 1.0])
    assert dropped.rank == parts[0].rank + parts[2].rank
    assert add(parts, [0.0, 0.0, 0.0]).rank == 0
    with pytest.raises(ConventionError):
        add(parts, [1.0])
