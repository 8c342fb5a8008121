"""State-dict parsing: every key spelling, hybrid modules, validation errors, scale conventions."""

import math

import pytest
import torch

from hadakron.adapters import detect_convention, module_scale, parse_adapter_state_dict
from hadakron.common.errors import AdapterFormatError, NonFiniteTensorError

R = torch.randn


@pytest.mark.parametrize(
    "up_key,down_key",
    [
        (".lora_up.weight", ".lora_down.weight"),
        (".lora_B.weight", ".lora_A.weight"),
        ("_lora.up.weight", "_lora.down.weight"),
        (".lora.up.weight", ".lora.down.weight"),
        (".lora_B", ".lora_A"),
        (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
        (".lora_B.default.weight", ".lora_A.default.weight"),
    ],
)
def test_every_lora_spelling(up_key, down_key):
    parsed = parse_adapter_state_dict({"m" + up_key: R(8, 2), "m" + down_key: R(2, 6), "m.alpha": torch.tensor(1.0)})
    (adapter,) = parsed.modules["m"]
    assert adapter.algo == "lora" and adapter.weights.rank == 2 and adapter.alpha == 1.0
    assert sorted(adapter.keys) == sorted(["m" + up_key, "m" + down_key, "m.alpha"])


def test_hybrid_module_applies_loha_lokr_lora_in_order():
    sd = {
        "m.lora_up.weight": R(8, 2),
        "m.lora_down.weight": R(2, 6),
        "m.lokr_w1": R(2, 2),
        "m.lokr_w2": R(4, 3),
        "m.hada_w1_a": R(8, 2),
        "m.hada_w1_b": R(2, 6),
        "m.hada_w2_a": R(8, 2),
        "m.hada_w2_b": R(2, 6),
        "x.lokr_w1": R(2, 2),
        "x.lokr_w2_a": R(4, 1),
        "x.lokr_w2_b": R(1, 3),
    }
    parsed = parse_adapter_state_dict(sd)
    assert [a.algo for a in parsed.modules["m"]] == ["loha", "lokr", "lora"]
    assert parsed.algo_counts() == {"loha": 1, "lokr": 2, "lora": 1}


def test_two_spellings_of_one_tensor_is_an_error():
    with pytest.raises(AdapterFormatError, match="two spellings"):
        parse_adapter_state_dict(
            {"m.lora_up.weight": R(8, 2), "m.lora_B.weight": R(8, 2), "m.lora_down.weight": R(2, 6)}
        )


@pytest.mark.parametrize(
    "sd,match",
    [
        ({"m.lora_up.weight": R(8, 2)}, "missing down"),
        ({"m.lora_up.weight": R(8, 3), "m.lora_down.weight": R(2, 6)}, "ranks differ"),
        ({"m.hada_w1_a": R(8, 2), "m.hada_w1_b": R(2, 6), "m.hada_w2_a": R(8, 2)}, "missing w2b"),
        ({"m.lokr_w1": R(2, 2)}, "LoKr needs"),
        ({"m.lokr_w1": R(2, 2), "m.lokr_w2_a": R(4, 2), "m.lokr_w2_b": R(3, 3)}, "ranks differ"),
        ({"m.lora_up.weight": torch.ones(8, 2, dtype=torch.int32), "m.lora_down.weight": R(2, 6)}, "floating point"),
        ({"m.lora_up.weight": R(8, 0), "m.lora_down.weight": R(0, 6)}, "empty"),
        ({"m.lora_up.weight": R(8, 2), "m.lora_down.weight": R(2, 6), "m.alpha": R(3)}, "scalar"),
    ],
)
def test_inconsistent_modules_raise(sd, match):
    with pytest.raises(AdapterFormatError, match=match):
        parse_adapter_state_dict(sd)


def test_nan_is_refused_with_the_module_name():
    bad = R(2, 6)
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteTensorError, match="blocks_3"):
        parse_adapter_state_dict(
            {"lora_unet_blocks_3.lora_up.weight": R(8, 2), "lora_unet_blocks_3.lora_down.weight": bad}
        )
    parsed = parse_adapter_state_dict({"m.lora_up.weight": R(8, 2), "m.lora_down.weight": bad}, allow_nonfinite=True)
    assert "m" in parsed.modules


@pytest.mark.parametrize("bad_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_in_a_file_with_mixed_dtypes_is_found(tmp_path, bad_dtype):
    """The one-buffer screen of a read file must still see a NaN in a tensor of a minority dtype."""
    from hadakron.common.tensor_files import load_tensor_file, save_tensor_file

    bad = R(2, 6).to(bad_dtype)
    bad[1, 3] = float("nan")
    sd = {f"lora_unet_blocks_{i}.lora_up.weight": R(64, 2).bfloat16() for i in range(4)}
    sd |= {f"lora_unet_blocks_{i}.lora_down.weight": R(2, 6).bfloat16() for i in range(1, 4)}
    sd |= {f"lora_unet_blocks_{i}.alpha": torch.tensor(2.0) for i in range(4)}
    sd["lora_unet_blocks_0.lora_down.weight"] = bad
    save_tensor_file(sd, tmp_path / "a.safetensors")
    tensors, _ = load_tensor_file(tmp_path / "a.safetensors")
    with pytest.raises(NonFiniteTensorError, match="blocks_0"):
        parse_adapter_state_dict(tensors)
    sd["lora_unet_blocks_0.lora_down.weight"] = R(2, 6).to(bad_dtype)
    save_tensor_file(sd, tmp_path / "b.safetensors")
    assert len(parse_adapter_state_dict(load_tensor_file(tmp_path / "b.safetensors")[0]).modules) == 4


def test_fp8_tensors_are_upcast():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no fp8 in this torch")
    sd = {"m.lora_up.weight": R(8, 2).to(torch.float8_e4m3fn), "m.lora_down.weight": R(2, 6)}
    (adapter,) = parse_adapter_state_dict(sd).modules["m"]
    assert adapter.weights.up.dtype == torch.float32


def test_globals_and_unknown_keys_are_collected():
    sd = {
        "lokr_factor": torch.tensor(4.0),
        "use_rslora_flag": torch.tensor(1.0),
        "m.lokr_w1": R(2, 2),
        "m.lokr_w2": R(4, 3),
        "m.lokr_factor": torch.tensor(4),
        "weird_key": R(1),
    }
    parsed = parse_adapter_state_dict(sd, metadata={"ss_lokr_factor": "4"})
    assert set(parsed.globals) == {"lokr_factor", "use_rslora_flag"}
    assert parsed.unknown_keys == ["weird_key"]
    assert parsed.persisted_factor() == (4, 4)
    assert "m.lokr_factor" in parsed.modules["m"][0].keys


def _one(sd, **kw):
    return next(parse_adapter_state_dict(sd, **kw).adapters())


def test_scale_conventions_side_by_side():
    lora = _one({"m.lora_up.weight": R(8, 4), "m.lora_down.weight": R(4, 6), "m.alpha": torch.tensor(2.0)})
    assert module_scale(lora, "lycoris") == 0.5
    assert module_scale(lora, "rs_lora") == pytest.approx(1.0)
    assert module_scale(lora, "peft", rslora_flag=True) == pytest.approx(1.0)
    full = _one({"m.lokr_w1": R(4, 4), "m.lokr_w2": R(8, 6), "m.alpha": torch.tensor(32.0)})
    assert module_scale(full, "lycoris") == 1.0
    assert module_scale(full, "musubi_pr901") == pytest.approx(32.0 / 8)
    low = _one({"m.lokr_w1": R(4, 4), "m.lokr_w2_a": R(8, 2), "m.lokr_w2_b": R(2, 6), "m.alpha": torch.tensor(1.0)})
    assert module_scale(low, "lycoris") == 0.5
    no_alpha = _one({"m.hada_w1_a": R(8, 3), "m.hada_w1_b": R(3, 6), "m.hada_w2_a": R(8, 3), "m.hada_w2_b": R(3, 6)})
    assert module_scale(no_alpha, "lycoris") == 1.0


def test_peft_config_supplies_rank_and_alpha_patterns():
    cfg = {"r": 8, "alpha": 16, "rank_pattern": {"to_q": 4}, "alpha_pattern": {"to_q": 2}}
    q = _one(
        {"base_model.model.blocks.0.to_q.lokr_w1": R(4, 4), "base_model.model.blocks.0.to_q.lokr_w2": R(8, 6)},
        peft_config=cfg,
    )
    assert module_scale(q, "peft") == pytest.approx(2 / 4)
    k = _one(
        {"base_model.model.blocks.0.to_k.lokr_w1": R(4, 4), "base_model.model.blocks.0.to_k.lokr_w2": R(8, 6)},
        peft_config=cfg,
    )
    assert module_scale(k, "peft") == pytest.approx(16 / 8)


@pytest.mark.parametrize(
    "keys,metadata,peft,expected",
    [
        (
            ["m.lokr_w1"],
            {
                "hadakron.producer": "hadakron 0.1.0",
                "hadakron.convention": "musubi_pr901",
                "ss_network_module": "networks.lokr",
            },
            None,
            "musubi_pr901",
        ),
        (["base_model.model.x.lokr_w1"], {}, None, "peft"),
        (["x.lokr_w1"], {}, {"r": 4}, "peft"),
        (["lokr_factor", "x.lokr_w1"], {}, None, "musubi_pr901"),
        (["x.lokr_w1"], {"ss_lokr_factor": "4"}, None, "musubi_pr901"),
        (["x.lokr_w1"], {"ss_network_module": "lycoris.kohya"}, None, "lycoris"),
        (["x.lokr_w1"], {"ss_network_module": "networks.lokr"}, None, "lycoris"),
        (["x.lokr_w1"], {}, None, "lycoris"),
    ],
)
def test_auto_convention(keys, metadata, peft, expected):
    assert detect_convention(keys, metadata, peft).convention == expected


def test_explicit_convention_wins():
    choice = detect_convention(["base_model.model.x.lokr_w1"], {}, None, requested="rs_lora")
    assert choice.convention == "rs_lora" and "explicit" in choice.reason
    assert math.isclose(1.0, 1.0)


def _lokr_full(prefix: str, alpha: float) -> dict:
    return {f"{prefix}.lokr_w1": R(4, 4), f"{prefix}.lokr_w2": R(16, 16), f"{prefix}.alpha": torch.tensor(alpha)}


def _lora(prefix: str, up: str = ".lora_up.weight", down: str = ".lora_down.weight") -> dict:
    return {f"{prefix}{up}": R(8, 4), f"{prefix}{down}": R(4, 6), f"{prefix}.alpha": torch.tensor(2.0)}


def test_mixed_conventions_in_one_file_raise_naming_the_file_markers_and_modules(tmp_path):
    """auto must not silently pick one convention for a file whose producers disagree on a module's scale."""
    from hadakron.common.errors import ConventionError
    from hadakron.common.tensor_files import save_tensor_file
    from hadakron.loading import read_adapter

    # A LyCORIS kohya LoKr (full matrix, alpha forced to dim 64: scale 1) with PR #901 modules merged in
    # (lokr_factor): under PR #901's rule the LyCORIS module would get 64 / 16 = 4.
    lyco = {**_lokr_full("lora_unet_blocks_0_ffn_0", 64.0), **_lokr_full("lora_unet_blocks_1_ffn_0", 16.0)}
    path = save_tensor_file(
        {**lyco, "lokr_factor": torch.tensor(4)}, tmp_path / "mixed.safetensors", {"ss_network_module": "lycoris.kohya"}
    )
    with pytest.raises(ConventionError) as raised:
        read_adapter(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: mixed scale conventions in one file")
    assert "lokr_factor -> musubi_pr901" in message and "ss_network_module lycoris.kohya -> lycoris" in message
    assert "1 module(s)" in message and "lora_unet_blocks_0_ffn_0: musubi_pr901 4, lycoris 1" in message
    assert read_adapter(path, "lycoris").convention.convention == "lycoris"  # an explicit choice settles it

    # PEFT-prefixed and kohya-prefixed LoRA modules with PR #901's rsLoRA flag: α/√r vs α/r.
    peft_and_kohya = {
        **_lora("base_model.model.blocks.0.q", ".lora_B.weight", ".lora_A.weight"),
        **_lora("lora_unet_blocks_0_k"),
        "use_rslora_flag": torch.tensor(1.0),
    }
    path = save_tensor_file(peft_and_kohya, tmp_path / "prefixes.safetensors")
    with pytest.raises(ConventionError, match=r"prefixes\.safetensors: .*keys without the PEFT prefix .*-> lycoris"):
        read_adapter(path)

    # The same mix without the flag scales every module alike (α/r): harmless, loaded by §7.3's order.
    del peft_and_kohya["use_rslora_flag"]
    path = save_tensor_file(peft_and_kohya, tmp_path / "harmless.safetensors")
    assert read_adapter(path).convention.convention == "peft"


def test_consistent_producer_markers_are_not_mixed():
    """PR #901 (a musubi fork) writes networks.* with its lokr_factor; HadaKron's tag wins outright."""
    sd = {**_lokr_full("lora_unet_blocks_0_ffn_0", 64.0), "lokr_factor": torch.tensor(4)}
    adapters = list(parse_adapter_state_dict(sd).adapters())
    meta = {"ss_network_module": "networks.lokr", "ss_lokr_factor": "4"}
    assert detect_convention(sd, meta, None, adapters=adapters).convention == "musubi_pr901"
    tagged = {**meta, "ss_network_module": "lycoris.kohya", "hadakron.producer": "hadakron 0.1.0"}
    assert detect_convention(sd, {**tagged, "hadakron.convention": "lycoris"}, None, adapters=adapters).convention == (
        "lycoris"
    )
