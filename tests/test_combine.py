"""Combining adapter files (merge/combine.py): exact sums, SVD to LoRA, to-lora, resize, re-loading."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from engine_cases import loha_case, lokr_case, lora_case
from hadakron.adapters import apply_to_weight, module_scale
from hadakron.adapters.keys import KOHYA_SUFFIX
from hadakron.common.errors import (
    ArchitectureMismatchError,
    ConventionError,
    OutputExistsError,
    UnsupportedError,
)
from hadakron.common.tensor_files import load_tensor_file, save_tensor_file
from hadakron.loading import read_adapter
from hadakron.merge import metadata as md
from hadakron.merge.combine import combine_adapters, resize_lora, save_result, to_lora

# canonical module -> weight shape
SHAPES = {
    "blocks.0.ffn.0": (96, 80),
    "blocks.0.conv": (24, 12, 3, 3),
    "blocks.1.attn": (64, 48),
    "blocks.2.proj": (96, 80),
    "blocks.3.conv": (24, 12, 3, 3),
}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _keys(name, weights, alpha=None):
    out = {f"{name}{KOHYA_SUFFIX[(weights.algo, role)]}": t for role, t in vars(weights).items() if t is not None}
    if alpha is not None:
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _underscore(module):
    return "lora_unet_" + module.replace(".", "_")


def _dotted(module):
    return "diffusion_model." + module


def _file(tmp_path, fname, modules, metadata=None):
    tensors = {}
    for name, weights, alpha in modules:
        tensors.update(_keys(name, weights, alpha))
    path = tmp_path / fname
    save_tensor_file(tensors, path, metadata)
    return path


@pytest.fixture
def files(tmp_path):
    s = SHAPES
    a = _file(
        tmp_path,
        "a.safetensors",
        [
            (_underscore("blocks.0.ffn.0"), lora_case(s["blocks.0.ffn.0"], 4, gen=_gen(1)), 2.0),
            (_underscore("blocks.0.conv"), lora_case(s["blocks.0.conv"], 3, gen=_gen(2)), 3.0),
            (_underscore("blocks.1.attn"), lora_case(s["blocks.1.attn"], 4, gen=_gen(3)), 8.0),
        ],
        {"ss_network_module": "networks.lora", "ss_base_model_version": "wan", "sshs_model_hash": "stale"},
    )
    b = _file(
        tmp_path,
        "b.safetensors",
        [
            (_dotted("blocks.0.ffn.0"), loha_case(s["blocks.0.ffn.0"], 3, gen=_gen(4)), 1.5),
            (_dotted("blocks.0.conv"), loha_case(s["blocks.0.conv"], 2, gen=_gen(5)), None),
            (_dotted("blocks.1.attn"), lora_case(s["blocks.1.attn"], 2, gen=_gen(6)), 1.0),
            (_dotted("blocks.2.proj"), lokr_case(s["blocks.2.proj"], "lowrank", 3, gen=_gen(7)), 3.0),
        ],
    )
    c = _file(
        tmp_path,
        "c.safetensors",
        [
            (_underscore("blocks.0.ffn.0"), lokr_case(s["blocks.0.ffn.0"], "full", gen=_gen(8)), None),
            (_underscore("blocks.3.conv"), lokr_case(s["blocks.3.conv"], "lowrank", 2, gen=_gen(9)), 2.0),
        ],
    )
    return a, b, c


def _canonical(name):
    for prefix in ("lora_unet_", "diffusion_model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".", "_")


def _applied(paths, weights, shapes=SHAPES):
    """Flattened ΔW per module after applying each file in turn to zero weights (the reference)."""
    result = {m.replace(".", "_"): torch.zeros(shape, dtype=torch.float64) for m, shape in shapes.items()}
    for path, weight in zip(paths, weights, strict=True):
        source = read_adapter(path)
        for adapter in source.parsed.adapters():
            if adapter.weights.algo == "full" and adapter.weights.on_bias:
                continue
            scale = module_scale(adapter, source.convention.convention)
            apply_to_weight(adapter, result[_canonical(adapter.name)], weight, scale)
    return {k: v.reshape(v.shape[0], -1) for k, v in result.items()}


def _rel(a, b):
    norm = float(b.norm())
    return float((a - b).norm()) / norm if norm else float(a.norm())


def _saved_and_reloaded(result, tmp_path, name="out.safetensors"):
    path = save_result(result, tmp_path / name)
    return path, read_adapter(path)


def test_exact_equals_applying_one_after_another(files, tmp_path):
    weights = [1.0, -0.5, 0.75]
    result = combine_adapters([read_adapter(p) for p in files], weights, mode="exact")
    kinds = {layer.name: layer.kind for layer in result.layers}
    assert kinds["lora_unet_blocks_0_ffn_0"] == "diff"  # LoRA + LoHa + LoKr
    assert kinds["lora_unet_blocks_1_attn"] == "lora"  # LoRA + LoRA: concatenated
    assert kinds["lora_unet_blocks_0_conv"] == "lora"  # LoRA + LoHa, smaller than a diff
    assert kinds["lora_unet_blocks_2_proj"] == "lokr"  # one LoKr: native factors
    assert kinds["lora_unet_blocks_3_conv"] == "lokr"
    assert result.tensors["lora_unet_blocks_1_attn.lora_up.weight"].shape == (64, 6)
    assert float(result.tensors["lora_unet_blocks_1_attn.alpha"]) == 6.0
    assert result.rel_error == 0.0 and result.kept_energy == 1.0
    out, _ = _saved_and_reloaded(result, tmp_path)
    expected = _applied(files, weights)
    got = _applied([out], [1.0])
    for module in expected:
        assert _rel(got[module], expected[module]) < 1e-5, module


def test_svd_matches_eckart_young_per_layer(files, tmp_path):
    weights = [1.0, 0.5, 1.0]
    expected = _applied(files, weights)
    rank = 5
    result = combine_adapters([read_adapter(p) for p in files], weights, mode="svd", rank=rank, dtype=torch.float32)
    out, reloaded = _saved_and_reloaded(result, tmp_path)
    got = _applied([out], [1.0])
    total = dropped = 0.0
    for layer in result.layers:
        module = _canonical(layer.name)
        s = torch.linalg.svdvals(expected[module])
        optimum = math.sqrt(float((s[rank:] ** 2).sum() / (s**2).sum()))
        assert layer.rank == rank and layer.kind == "lora"
        assert layer.rel_error == pytest.approx(optimum, rel=1e-4)
        assert _rel(got[module], expected[module]) == pytest.approx(optimum, rel=1e-3)
        assert layer.kept_energy == pytest.approx(1 - optimum**2, rel=1e-4)
        total += float((s**2).sum())
        dropped += float((s[rank:] ** 2).sum())
    assert result.rel_error == pytest.approx(math.sqrt(dropped / total), rel=1e-4)
    assert all(a.algo == "lora" for a in reloaded.parsed.adapters() if not getattr(a.weights, "on_bias", False))
    assert reloaded.convention.convention == "lycoris"
    assert "lora_unet_blocks_0_conv.lora_down.weight" in result.tensors
    assert result.tensors["lora_unet_blocks_0_conv.lora_down.weight"].shape == (rank, 12, 3, 3)


def test_svd_energy_and_lossless(files):
    sources = [read_adapter(p) for p in files]
    lossless = combine_adapters(sources, mode="svd")
    assert lossless.rel_error < 1e-5
    by_energy = combine_adapters(sources, mode="svd", energy=0.9)
    assert all(layer.kept_energy >= 0.9 - 1e-6 for layer in by_energy.layers)
    assert by_energy.kept_energy >= 0.9 - 1e-6


def test_zero_weight_drops_a_term(files, tmp_path):
    a, b, c = files
    result = combine_adapters([read_adapter(a), read_adapter(b)], [1.0, 0.0])
    names = {layer.name for layer in result.layers}
    assert names == {"lora_unet_blocks_0_ffn_0", "lora_unet_blocks_0_conv", "lora_unet_blocks_1_attn"}
    assert all(layer.kind == "lora" for layer in result.layers)
    assert result.tensors["lora_unet_blocks_0_ffn_0.lora_up.weight"].shape[1] == 4
    out, _ = _saved_and_reloaded(result, tmp_path)
    expected, got = _applied([a], [1.0]), _applied([out], [1.0])
    for module in expected:
        assert _rel(got[module], expected[module]) < 1e-5


def test_metadata_describes_the_merge(files):
    result = combine_adapters([read_adapter(p) for p in files], [1.0, 2.0, 0.5], mode="svd", rank=4)
    meta = result.metadata
    assert meta["hadakron.producer"] == "hadakron 0.1.0"
    assert meta["hadakron.convention"] == "lycoris"
    assert meta["ss_network_module"] == "networks.lora_wan"  # musubi's WAN LoRA module (networks.lora finds none)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"
    assert meta["ss_base_model_version"] == "wan"
    assert "sshs_model_hash" not in meta
    info = json.loads(meta["hadakron.merge"])
    assert info["sources"] == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert info["weights"] == [1.0, 2.0, 0.5] and info["mode"] == "svd" and info["rank"] == 4
    assert "overall kept energy" in result.render()


def test_network_module_follows_the_written_tensors():
    module = md.network_module
    assert module({"lora"}, "networks.lokr", "wan") == "networks.lora_wan"
    assert module({"lora"}, "networks.lora_zimage", None) == "networks.lora_zimage"
    assert module({"lora"}, "lycoris.kohya", None) == "networks.lora"
    assert module({"lokr"}, "networks.lora_wan", "wan") == "networks.lokr"
    assert module({"loha"}, "lycoris.kohya", "wan") == "lycoris.kohya"
    assert module({"lora", "lokr"}, "networks.lora_wan", "wan") == "lycoris.kohya"
    assert module({"diff"}, "", None) == "lycoris.kohya"


def _musubi_lora_layout(tensors: dict[str, torch.Tensor]) -> None:
    """What musubi-tuner main's LoRA loader needs (``create_network_from_weights`` + ``merge_to``).

    It splits each key at the first ``.`` into a ``lora_unet_…`` module name, takes the rank from
    ``lora_down`` and the alpha from ``.alpha`` (``KeyError`` without it) as a 0-d float, decides the
    algorithm per file from its keys, and multiplies ``up @ down`` (conv: 1×1 ``up``, kernel in ``down``).
    """
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, role = key.partition(".")
        assert name.startswith("lora_unet_") and role, key
        modules.setdefault(name, {})[role] = tensor
    for name, roles in modules.items():
        assert set(roles) == {"lora_up.weight", "lora_down.weight", "alpha"}, (name, set(roles))
        up, down, alpha = roles["lora_up.weight"], roles["lora_down.weight"], roles["alpha"]
        assert alpha.dtype == torch.float32 and alpha.shape == (), (name, alpha.dtype, alpha.shape)
        assert float(alpha) == down.shape[0] == up.shape[1], name
        assert up.dim() == down.dim() and all(d == 1 for d in up.shape[2:]), name


def _lora_only(tmp_path, name, shapes, rank, seed):
    modules = [
        (_underscore(m), lora_case(shape, rank, gen=_gen(seed + i)), rank / 2) for i, (m, shape) in enumerate(shapes)
    ]
    return _file(tmp_path, name, modules, {"ss_network_module": "networks.lora_wan", "ss_base_model_version": "wan"})


def test_lora_outputs_have_the_layout_musubi_loads(files, tmp_path):
    a, b, c = files
    sources = [read_adapter(p) for p in files]
    outputs = {
        "svd": combine_adapters(sources, [1.0, 0.5, 1.0], mode="svd", rank=3),
        "exact": combine_adapters([read_adapter(a), read_adapter(a)], [1.0, -0.25]),
        "to_lora": to_lora(read_adapter(c), energy=0.99),
        "resize": resize_lora(read_adapter(a), rank=2),
    }
    for label, result in outputs.items():
        path = save_result(result, tmp_path / f"{label}.safetensors")
        tensors, meta = load_tensor_file(path)
        _musubi_lora_layout(tensors)
        assert meta["ss_network_module"] == "networks.lora_wan", label
        ranks = [int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_down.weight")]
        assert int(meta["ss_network_dim"]) == max(ranks) and float(meta["ss_network_alpha"]) == max(ranks), label


def _independent_hashes(path) -> tuple[str, str, str]:
    """(model hash, legacy hash) by the sd-scripts definition, recomputed from the written file, and the
    SHA-256 of the file's own data region (what sd-webui hashes when it indexes the file)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + size]).get("__metadata__", {})
    blob = safetensors_save(load_file(str(path)), metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    blob_size = int.from_bytes(blob[:8], "little")
    model = hashlib.sha256(blob[8 + blob_size :]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model, legacy, hashlib.sha256(raw[8 + size :]).hexdigest()


def test_outputs_carry_the_hashes_of_the_written_file(files, tmp_path):
    from hadakron.cli import main

    a, b, c = files
    big = _lora_only(
        tmp_path, "big.safetensors", [("blocks.4.ffn.0", (1024, 512)), ("blocks.5.ffn.2", (512, 1024))], 96, 20
    )
    runs = {
        "combine": ["combine", str(a), str(b), "--weights", "1", "0.5"],  # exact: LoRA and native LoKr modules
        "combine_svd": ["combine", str(big), str(a), "--rank", "80", "--dtype", "bf16"],
        "to_lora": ["to-lora", str(c), "--rank", "3"],
        "resize": ["resize", str(big), "--rank", "94"],
    }
    for label, argv in runs.items():
        out = tmp_path / f"{label}.safetensors"
        assert main([*argv, "--out", str(out)]) == 0, label
        meta = load_tensor_file(out)[1]
        model, legacy, data_region = _independent_hashes(out)
        assert meta["sshs_model_hash"] == model == data_region, label
        assert meta["sshs_legacy_hash"] == legacy, label
        assert meta["sshs_model_hash"] != "stale"
    assert load_tensor_file(tmp_path / "resize.safetensors")[1]["sshs_legacy_hash"] != "e3b0c442"  # > 1 MiB
    pt = save_result(resize_lora(read_adapter(a), rank=2), tmp_path / "x.pt")
    assert not {"sshs_model_hash", "sshs_legacy_hash"} & set(load_tensor_file(pt)[1])


def test_to_lora_is_optimal_and_lossless_without_target(files, tmp_path):
    _, b, c = files
    source = read_adapter(c)
    expected = _applied([c], [1.0])
    exact = to_lora(source)
    out, _ = _saved_and_reloaded(exact, tmp_path, "exact.safetensors")
    got = _applied([out], [1.0])
    for layer in exact.layers:
        assert _rel(got[_canonical(layer.name)], expected[_canonical(layer.name)]) < 1e-5
    truncated = to_lora(read_adapter(b), rank=3)
    reference = _applied([b], [1.0])
    for layer in truncated.layers:
        s = torch.linalg.svdvals(reference[_canonical(layer.name)])
        k = min(3, int((s > s[0] * 1e-6).sum()))
        optimum = math.sqrt(float((s[k:] ** 2).sum() / (s**2).sum()))
        assert layer.rel_error == pytest.approx(optimum, rel=1e-4, abs=1e-6)


def test_resize_lora(files, tmp_path):
    a, b, _ = files
    result = resize_lora(read_adapter(a), rank=2)
    assert {layer.rank for layer in result.layers} == {2}
    bigger = resize_lora(read_adapter(a), rank=16)
    assert bigger.rel_error < 1e-5 and {layer.rank for layer in bigger.layers} == {3, 4}
    with pytest.raises(UnsupportedError):
        resize_lora(read_adapter(b), rank=2)
    half = resize_lora(read_adapter(a), rank=3, dtype=torch.bfloat16)
    assert half.tensors["lora_unet_blocks_1_attn.lora_up.weight"].dtype == torch.bfloat16
    assert half.tensors["lora_unet_blocks_1_attn.alpha"].dtype == torch.float32  # bf16 cannot hold every rank


def test_bias_diffs_are_summed(tmp_path):
    bias = torch.randn(96, generator=_gen(11))
    lora = lora_case((96, 80), 4, gen=_gen(12))
    one = _file(tmp_path, "one.safetensors", [(_underscore("blocks.0.ffn.0"), lora, None)])
    tensors = {f"{_underscore('blocks.0.ffn.0')}.diff_b": bias}
    two = tmp_path / "two.safetensors"
    save_tensor_file(tensors, two)
    result = combine_adapters([read_adapter(one), read_adapter(two)], [1.0, 0.5], mode="svd", rank=2)
    assert torch.allclose(result.tensors["lora_unet_blocks_0_ffn_0.diff_b"], 0.5 * bias)


def test_refusals(files, tmp_path):
    a, _, _ = files
    source = read_adapter(a)
    with pytest.raises(ConventionError):
        combine_adapters([source], mode="exact", rank=4)
    with pytest.raises(ConventionError):
        combine_adapters([source], [1.0, 2.0])
    with pytest.raises(ConventionError):
        combine_adapters([source], mode="svd", energy=1.5)
    flux = _file(tmp_path, "flux.safetensors", [("lora_unet_double_blocks_0_img_attn_qkv", lora_case((96, 80)), None)])
    with pytest.raises(ArchitectureMismatchError):
        combine_adapters([source, read_adapter(flux)])
    dora = _keys("lora_unet_blocks_0_ffn_0", lora_case((96, 80)))
    dora["lora_unet_blocks_0_ffn_0.dora_scale"] = torch.ones(96, 1)
    save_tensor_file(dora, tmp_path / "dora.safetensors")
    with pytest.raises(UnsupportedError):
        combine_adapters([read_adapter(tmp_path / "dora.safetensors")])
    result = combine_adapters([source])
    save_result(result, tmp_path / "x.safetensors")
    with pytest.raises(OutputExistsError):
        save_result(result, tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_commands(files, tmp_path, capsys):
    from hadakron.cli import main

    a, b, c = files
    out = tmp_path / "cli.safetensors"
    assert main(["combine", str(a), str(b), "--weights", "1", "0.5", "--out", str(out), "--rank", "3"]) == 0
    assert "overall kept energy" in capsys.readouterr().out
    assert json.loads(read_adapter(out).parsed.metadata["hadakron.merge"])["mode"] == "svd"
    assert main(["combine", str(a), "--out", str(out)]) == 1  # exists, no --overwrite
    assert main(["to-lora", str(c), "--out", str(tmp_path / "t.safetensors"), "--energy", "0.99"]) == 0
    assert main(["resize", str(b), "--out", str(tmp_path / "r.safetensors"), "--rank", "2"]) == 1
    assert main(["combine", str(a), "--mode", "exact", "--rank", "2", "--out", str(tmp_path / "e.safetensors")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["to-lora", str(c), "--out", str(tmp_path / "u.safetensors")])
    assert exc.value.code == 2


# --------------------------------------------------------------------------------------------- nodes


def test_nodes_write_into_loras_and_load_natively(comfy):
    from pathlib import Path

    from loader_helpers import base, patched
    from tiny_models import build_tiny

    mp = build_tiny("wan21", seed=2)
    sd = mp.model.state_dict()
    q, ffn = "blocks.0.self_attn.q", "blocks.0.ffn.0"
    shape = {m: tuple(sd[f"diffusion_model.{m}.weight"].shape) for m in (q, ffn)}
    loras = Path(comfy.folder_paths.get_folder_paths("loras")[0])
    lora_q, lora_f = lora_case(shape[q], 4, gen=_gen(20)), lora_case(shape[ffn], 4, gen=_gen(21))
    lokr_q = lokr_case(shape[q], "lowrank", 2, gen=_gen(22))
    _file(loras, "node_a.safetensors", [(_underscore(q), lora_q, 2.0), (_underscore(ffn), lora_f, 4.0)])
    _file(loras, "node_b.safetensors", [(_dotted(q), lokr_q, 2.0)])
    node = comfy.node_class("HadaKronCombineAdapters")
    kwargs = dict(adapter_1="node_a.safetensors", weight_1=1.0, adapter_2="node_b.safetensors", weight_2=0.5)
    kwargs.update(adapter_3="none", weight_3=1.0, adapter_4="none", weight_4=1.0, energy=0.0, convention="auto")
    path, report = node.execute(mode="exact", rank=0, output_name="merged/t", **kwargs).result
    assert Path(path) == loras / "merged" / "t.safetensors" and "mode exact" in report
    again, _ = node.execute(mode="exact", rank=0, output_name="merged/t", **kwargs).result
    assert again.endswith("t_00001.safetensors")
    native = comfy.node_class("LoraLoaderModelOnly")().load_lora_model_only(mp, "merged/t.safetensors", 1.0)[0]
    expected = {
        q: 0.5 * lora_q.up @ lora_q.down + 0.5 * lokr_q.delta(shape[q]),
        ffn: lora_f.up @ lora_f.down,
    }
    for module, delta in expected.items():
        key = f"diffusion_model.{module}.weight"
        torch.testing.assert_close(patched(native, key), base(mp, key) + delta, rtol=1e-5, atol=1e-6)
    svd_path, svd_report = node.execute(mode="svd", rank=2, output_name="merged/s", **kwargs).result
    assert "relative error" in svd_report and read_adapter(svd_path).parsed.algo_counts() == {"lora": 2}
    lora_path, _ = comfy.node_class("HadaKronToLoRA").execute("node_b.safetensors", 2, 0.0, "auto", "c/x").result
    assert Path(lora_path).parent == loras / "c"
    resized, _ = comfy.node_class("HadaKronResizeLoRA").execute("node_a.safetensors", 2, 0.0, "auto", "r/x").result
    assert {a.weights.rank for a in read_adapter(resized).parsed.adapters()} == {2}
