"""Loader features on a real tiny WAN model: hybrid modules, trainer diffs, conventions, filters,
per-block strengths, bypass mode, prefer_lycoris, text-encoder keys, errors and the report."""

from __future__ import annotations

import logging

import pytest
import torch

from loader_helpers import base, dense, factors, patched, write_adapter
from test_loader_inprocess import _loras_dir
from tiny_models import build_tiny

pytestmark = pytest.mark.comfy
Q = "diffusion_model.blocks.0.self_attn.q.weight"


@pytest.fixture(scope="module")
def wan():
    return build_tiny("wan21", seed=2)


def _load(comfy, mp, tensors, name, metadata=None, peft_config=None, **kw):
    name = write_adapter(_loras_dir(comfy), name, tensors, metadata, peft_config)
    args = {"model": mp, "adapter_name": name, "strength_model": 1.0, "convention": "auto", **kw}
    with torch.inference_mode():
        return comfy.node_class("HadaKronLoadAdapter").execute(**args).result


def _prefixed(prefix, parts):
    return {prefix + k: v for k, v in parts.items()}


def test_hybrid_module_applies_every_family(comfy, wan):
    g = torch.Generator().manual_seed(0)
    lokr, lora = factors("lokr", 128, 128, gen=g), factors("lora", 128, 128, gen=g)
    tensors = {**_prefixed("lora_unet_blocks_0_self_attn_q", lokr), **_prefixed("lora_unet_blocks_0_self_attn_q", lora)}
    model, _, report = _load(comfy, wan, tensors, "hybrid.safetensors")
    assert "hybrid modules" in report and "lokr, lora" in report
    torch.testing.assert_close(patched(model, Q), base(wan, Q) + dense(lokr) + dense(lora), rtol=1e-5, atol=1e-6)


def test_comfy_trainer_diff_and_diff_b(comfy, wan):
    g = torch.Generator().manual_seed(1)
    norm_key = "diffusion_model.blocks.0.norm3.weight"
    bias_key = "diffusion_model.blocks.0.self_attn.q.bias"
    tensors = {
        "diffusion_model.blocks.0.norm3.diff": torch.randn(128, generator=g),
        "diffusion_model.blocks.0.self_attn.q.diff_b": torch.randn(128, generator=g),
        **_prefixed("diffusion_model.blocks.0.self_attn.q", factors("lora", 128, 128, gen=g)),
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(1.0),
    }
    model, _, report = _load(comfy, wan, tensors, "trainer.safetensors")
    assert "UNMATCHED" not in report
    torch.testing.assert_close(
        patched(model, norm_key), base(wan, norm_key) + tensors["diffusion_model.blocks.0.norm3.diff"]
    )
    torch.testing.assert_close(
        patched(model, bias_key), base(wan, bias_key) + tensors["diffusion_model.blocks.0.self_attn.q.diff_b"]
    )


def test_ai_toolkit_full_rank_alpha_reads_as_scale_one(comfy, wan):
    parts = factors("lokr", 128, 128, gen=torch.Generator().manual_seed(2), full_lokr=True)
    tensors = {
        **_prefixed("diffusion_model.blocks.0.self_attn.q", parts),
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(9999999999.0),
    }
    model, _, report = _load(comfy, wan, tensors, "aitk.safetensors", metadata={"software": '{"name": "ai-toolkit"}'})
    assert "ai-toolkit" in report
    torch.testing.assert_close(patched(model, Q), base(wan, Q) + dense(parts), rtol=1e-5, atol=1e-6)


def test_peft_lokr_with_w1_larger_and_config(comfy, wan):
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(16, 16, generator=g) * 0.2, torch.randn(8, 8, generator=g) * 0.2  # PEFT factor 16: w1 larger
    tensors = {"base_model.model.blocks.0.self_attn.q.lokr_w1": w1, "base_model.model.blocks.0.self_attn.q.lokr_w2": w2}
    config = {"peft_type": "LOKR", "r": 8, "alpha": 4, "rank_pattern": {}, "alpha_pattern": {}}
    model, _, report = _load(comfy, wan, tensors, "peft/adapter_model.safetensors", peft_config=config)
    assert "peft" in report
    torch.testing.assert_close(patched(model, Q), base(wan, Q) + 0.5 * torch.kron(w1, w2), rtol=1e-5, atol=1e-6)


def test_musubi_pr901_full_lokr_scale(comfy, wan):
    parts = factors("lokr", 128, 128, gen=torch.Generator().manual_seed(4), full_lokr=True)
    tensors = {
        **_prefixed("lora_unet_blocks_0_self_attn_q", parts),
        "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(8.0),
        "lokr_factor": torch.tensor(-1.0),
    }
    model, _, report = _load(comfy, wan, tensors, "pr901.safetensors", metadata={"ss_lokr_factor": "-1"})
    assert "musubi_pr901" in report and "lokr_factor" in report
    w2 = parts[".lokr_w2"]
    torch.testing.assert_close(
        patched(model, Q), base(wan, Q) + 8.0 / max(w2.shape) * dense(parts), rtol=1e-5, atol=1e-6
    )


def test_include_exclude_and_block_strengths(comfy, wan):
    g = torch.Generator().manual_seed(5)
    p0, p1 = factors("lora", 128, 128, gen=g), factors("lora", 128, 128, gen=g)
    k1 = "diffusion_model.blocks.1.self_attn.q.weight"
    tensors = {**_prefixed("lora_unet_blocks_0_self_attn_q", p0), **_prefixed("lora_unet_blocks_1_self_attn_q", p1)}
    model, _, _ = _load(comfy, wan, tensors, "blocks.safetensors", block_strengths="0:0.5, 1:2")
    torch.testing.assert_close(patched(model, Q), base(wan, Q) + 0.5 * dense(p0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(patched(model, k1), base(wan, k1) + 2.0 * dense(p1), rtol=1e-5, atol=1e-6)
    model, _, report = _load(comfy, wan, tensors, "blocks.safetensors", exclude=r"blocks\.1\.")
    assert k1 not in model.patches and Q in model.patches and "filtered out" in report
    model, _, _ = _load(comfy, wan, tensors, "blocks.safetensors", include=r"blocks\.1\.")
    assert Q not in model.patches and k1 in model.patches


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "lokr_full"])
def test_bypass_mode_equals_patch_mode(comfy, wan, algo):
    g = torch.Generator().manual_seed(6)
    parts = factors(algo.replace("_full", ""), 128, 128, gen=g, full_lokr=algo.endswith("full"))
    tensors = {
        **_prefixed("lora_unet_blocks_0_self_attn_q", parts),
        "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0),
    }
    patch_model, _, _ = _load(comfy, wan, tensors, f"bypass_{algo}.safetensors", strength_model=0.7)
    bypass_model, _, _ = _load(
        comfy, wan, tensors, f"bypass_{algo}.safetensors", strength_model=0.7, apply_mode="bypass"
    )
    assert Q not in bypass_model.patches
    x = torch.randn(2, 5, 128, generator=g)
    hook = bypass_model.object_patches["diffusion_model.blocks.0.self_attn.q.forward"]
    with torch.inference_mode():
        got = hook(x)
    bias = wan.model.state_dict()["diffusion_model.blocks.0.self_attn.q.bias"]
    want = torch.nn.functional.linear(x, patched(patch_model, Q), bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bypass_on_split_qkv_slice(comfy):
    mp = build_tiny("zimage", seed=3)
    g = torch.Generator().manual_seed(7)
    parts = factors("lokr", 128, 128, gen=g)
    tensors = _prefixed("lora_unet_layers_0_attention_to_k", parts)
    name = write_adapter(_loras_dir(comfy), "zi_k.safetensors", tensors)
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        bypass = node.execute(
            model=mp, adapter_name=name, strength_model=1.0, convention="auto", apply_mode="bypass"
        ).result[0]
        patch = node.execute(model=mp, adapter_name=name, strength_model=1.0, convention="auto").result[0]
        key = "diffusion_model.layers.0.attention.qkv.weight"
        x = torch.randn(3, 128, generator=g)
        got = bypass.object_patches["diffusion_model.layers.0.attention.qkv.forward"](x)
    torch.testing.assert_close(got, x @ patched(patch, key).t(), rtol=1e-5, atol=1e-5)


def test_prefer_lycoris_matches_native(comfy, wan):
    parts = factors("loha", 128, 128, gen=torch.Generator().manual_seed(8))
    tensors = {
        **_prefixed("lora_unet_blocks_0_self_attn_q", parts),
        "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0),
    }
    native, _, _ = _load(comfy, wan, tensors, "ly.safetensors")
    via_lycoris, _, _ = _load(comfy, wan, tensors, "ly.safetensors", prefer_lycoris=True)
    torch.testing.assert_close(patched(via_lycoris, Q), patched(native, Q), rtol=1e-5, atol=1e-6)


def test_matches_comfy_native_loader_where_conventions_agree(comfy, wan):
    import importlib

    comfy_sd = importlib.import_module("comfy.sd")
    g = torch.Generator().manual_seed(9)
    tensors = {}
    for algo, module in (("lora", "blocks_0_self_attn_q"), ("loha", "blocks_0_ffn_0"), ("lokr", "blocks_1_ffn_2")):
        out, inp = {"blocks_0_self_attn_q": (128, 128), "blocks_0_ffn_0": (256, 128), "blocks_1_ffn_2": (128, 256)}[
            module
        ]
        tensors.update(_prefixed(f"lora_unet_{module}", factors(algo, out, inp, gen=g)))
        tensors[f"lora_unet_{module}.alpha"] = torch.tensor(3.0)
    ours, _, _ = _load(comfy, wan, tensors, "native_cmp.safetensors", strength_model=0.6)
    native, _ = comfy_sd.load_lora_for_models(wan, None, tensors, 0.6, 0)
    for key in native.patches:
        torch.testing.assert_close(patched(ours, key), patched(native, key), rtol=1e-5, atol=1e-6)


def test_text_encoder_keys_are_reported_not_warned(comfy, wan, caplog):
    parts = factors("lora", 128, 128, gen=torch.Generator().manual_seed(10))
    tensors = {
        **_prefixed("lora_unet_blocks_0_self_attn_q", parts),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(8, 2),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 8),
        "lokr_factor": torch.tensor(4.0),
    }
    with caplog.at_level(logging.WARNING):
        _, _, report = _load(comfy, wan, tensors, "te.safetensors")
    assert "no CLIP given" in report and "lora_te_text_model_encoder_layers_0_mlp_fc1" in report
    assert "non-weight keys consumed" in report
    assert "lora key not loaded" not in caplog.text


def test_unmatched_and_foreign_family_errors(comfy, wan):
    from nodes_guard_import import node_error_type

    parts = factors("lokr", 9216, 3072, gen=torch.Generator().manual_seed(11))
    tensors = _prefixed("lora_unet_double_blocks_0_img_attn_qkv", parts)
    with pytest.raises(node_error_type(comfy), match="flux|unknown") as info:
        _load(comfy, wan, tensors, "flux_for_wan.safetensors")
    assert "wan" in str(info.value) and "flux_for_wan.safetensors" in str(info.value)


def test_corrupt_file_gives_one_line_error(comfy, wan):
    from nodes_guard_import import node_error_type

    path = _loras_dir(comfy) / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(node_error_type(comfy), match="corrupt.safetensors"):
        with torch.inference_mode():
            comfy.node_class("HadaKronLoadAdapter").execute(
                model=wan, adapter_name="corrupt.safetensors", strength_model=1.0, convention="auto"
            )


def test_path_escape_is_refused(comfy, wan):
    from nodes_guard_import import node_error_type

    with pytest.raises(node_error_type(comfy), match="not allowed"):
        comfy.node_class("HadaKronLoadAdapter").execute(
            model=wan, adapter_name="../../etc/passwd", strength_model=1.0, convention="auto"
        )


def test_text_encoder_keys_go_to_the_clip_with_strength_clip(comfy, wan):
    import functools

    from test_dataset_comfy import TINY_CLIP_CONFIG  # the same tiny real CLIP (SD1 tokenizer, width 32)
    from tiny_models import fill_deterministic

    sd1 = comfy.comfy.sd1_clip
    target = comfy.comfy.supported_models_base.ClipTarget(sd1.SD1Tokenizer, sd1.SD1ClipModel)
    target.params = {"clip_model": functools.partial(sd1.SDClipModel, textmodel_json_config=dict(TINY_CLIP_CONFIG))}
    clip = comfy.comfy.sd.CLIP(target=target)
    fill_deterministic(clip.cond_stage_model, seed=1)
    te_key = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert te_key in clip.cond_stage_model.state_dict()
    g = torch.Generator().manual_seed(12)
    te = factors("lora", 64, 32, gen=g)
    unet = factors("lokr", 128, 128, gen=g)
    tensors = {
        **_prefixed("lora_te_text_model_encoder_layers_0_mlp_fc1", te),
        **_prefixed("lora_unet_blocks_0_self_attn_q", unet),
    }
    name = write_adapter(_loras_dir(comfy), "te_and_unet.safetensors", tensors)
    with torch.inference_mode():
        model, new_clip, report = (
            comfy.node_class("HadaKronLoadAdapter")
            .execute(model=wan, clip=clip, adapter_name=name, strength_model=1.0, strength_clip=0.5, convention="auto")
            .result
        )
    assert "no CLIP given" not in report and "UNMATCHED" not in report
    got = patched(new_clip.patcher, te_key)
    want = clip.cond_stage_model.state_dict()[te_key].float() + 0.5 * dense(te)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(patched(model, Q), base(wan, Q) + dense(unet), rtol=1e-5, atol=1e-6)
    assert clip.patcher.patches == {}
