"""HadaKronTrainAdapter / HadaKronSaveAdapter on tiny real ComfyUI models (CPU, fp32).

Proves: loss falls when overfitting; same seed => identical losses; interrupted-then-resumed ==
uninterrupted (losses and weights); the shared model is left untouched; the saved file reloads in
HadaKron's loader under ``auto`` with the trained effect, in ComfyUI's native loader (``comfy`` key
format and the LORA_MODEL output) and in LyCORIS; the Z-Image objective equals musubi's with exactly
one time reversal; preview sampling every N steps leaves the run bit-identical and yields one image per
sample point (latent-to-RGB or VAE-decoded, WAN 2.2 expert split, never fatal).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import tiny_models
from loader_helpers import base, patched
from tiny_models import build_tiny

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_torch_thread")]

STEPS = 6
TARGETS = 20  # tiny WAN: 2 blocks x (self q/k/v/o, cross q/k/v/o, ffn.0, ffn.2)


def _data(n: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    latents = {"samples": torch.randn(n, 16, 1, 8, 8, generator=gen)}
    return [latents], [[[torch.randn(1, 8, 64, generator=gen), {}]]]


def train(comfy, model, name: str, **widgets):
    """Run the node directly (lists, as ComfyUI passes them to an is_input_list node)."""
    latents, positive = widgets.pop("data", None) or _data()
    values = dict(steps=STEPS, learning_rate=5e-3, network_dim=4, output_name=name, overwrite=True, seed=7)
    values.update(widgets)
    node = comfy.node_class("HadaKronTrainAdapter")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return node.execute(model=[model], latents=latents, positive=positive, **{k: [v] for k, v in values.items()})


def _loras(comfy) -> Path:
    return Path(comfy.folder_paths.get_folder_paths("loras")[0])


@pytest.fixture(scope="module")
def wan(comfy):
    mp = build_tiny("wan21", seed=3)
    mp.grad_flags_before = [p.requires_grad for p in mp.model.diffusion_model.parameters()]
    return mp


@pytest.fixture(scope="module")
def run_a(comfy, wan):
    return train(comfy, wan, "t/run_a")


def _target_keys(model_out) -> list[str]:
    return sorted(k if isinstance(k, str) else k[0] for k in model_out.patches)


def test_loss_falls_when_overfitting(comfy, wan):
    data = _data(1, seed=5)
    for algo in ("lokr", "loha"):
        out = train(
            comfy,
            wan,
            f"t/overfit_{algo}",
            algo=algo,
            steps=24,
            learning_rate=1e-2,
            data=data,
            min_timestep=400.0,
            max_timestep=600.0,
        )
        losses = out.result[2]["loss"]
        assert sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4, (algo, losses)


def test_same_seed_identical_and_shared_model_untouched(comfy, wan, run_a):
    again = train(comfy, wan, "t/run_a_again")
    assert again.result[2]["loss"] == run_a.result[2]["loss"]
    model_out, lora, losses, image, path, samples = run_a.result
    assert len(losses["loss"]) == STEPS and image.shape[-1] == 3 and Path(path).name == "run_a.safetensors"
    assert samples.shape == (1, 64, 64, 3) and not samples.any()  # sampling off
    assert wan.patches == {} and len(_target_keys(model_out)) == TARGETS
    for module in wan.model.diffusion_model.modules():
        assert "forward" not in module.__dict__
    assert [p.requires_grad for p in wan.model.diffusion_model.parameters()] == wan.grad_flags_before  # restored
    assert set(k.rsplit(".", 1)[0] for k in lora if k.endswith(".alpha")) == {
        "diffusion_model." + k[len("diffusion_model.") : -len(".weight")] for k in _target_keys(model_out)
    }


def test_interrupted_then_resumed_equals_uninterrupted(comfy, wan, run_a):
    mm, utils = comfy.comfy.model_management, comfy.comfy.utils
    previous = utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        if value == 3:
            mm.interrupt_current_processing(True)

    utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(comfy, wan, "t/run_b")
    finally:
        utils.set_progress_bar_global_hook(previous)
        mm.interrupt_current_processing(False)
    checkpoint = _loras(comfy) / "t" / "run_b-step00000003.safetensors"
    assert checkpoint.is_file() and checkpoint.with_suffix(".hkstate").is_file()
    resumed = train(comfy, wan, "t/run_b", resume_from="t/run_b-step00000003.safetensors")
    assert resumed.result[2]["loss"] == run_a.result[2]["loss"]
    a, b = load_file(run_a.result[4]), load_file(resumed.result[4])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _capture_previews(comfy):
    """Install a progress hook that records preview images; returns (records, restore)."""
    utils = comfy.comfy.utils
    previous, seen = utils.PROGRESS_BAR_HOOK, []
    utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, preview)))
    return seen, lambda: utils.set_progress_bar_global_hook(previous)


def test_preview_sampling_keeps_training_bit_identical(comfy, wan, run_a):
    seen, restore = _capture_previews(comfy)
    rng = torch.get_rng_state()
    try:
        out = train(comfy, wan, "t/run_sampled", sample_every_n_steps=2, sample_steps=2, sample_seed=11)
    finally:
        restore()
    assert out.result[2]["loss"] == run_a.result[2]["loss"]  # bit-identical to the run without sampling
    a, b = load_file(run_a.result[4]), load_file(out.result[4])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), rng)  # ComfyUI's torch.manual_seed was undone
    samples = out.result[5]
    assert samples.shape == (STEPS // 2, 8, 8, 3) and samples.dtype == torch.float32  # latent-to-RGB, 8x8 latent
    assert 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0
    assert not torch.equal(samples[0], samples[-1])  # the adapter trained between sample points
    previews = [(step, p) for step, p in seen if p is not None]
    assert [step for step, _ in previews] == [2, 4, 6]
    assert all(p[0] == "JPEG" and p[1].size == (8, 8) and p[2] == 512 for _, p in previews)
    assert all("forward" not in m.__dict__ for m in wan.model.diffusion_model.modules())
    drop = dict(steps=4, rank_dropout=0.3, module_dropout=0.2)  # the dropout generator is left alone too
    plain = train(comfy, wan, "t/run_drop", **drop).result[2]["loss"]
    assert train(comfy, wan, "t/run_drop_s", sample_every_n_steps=1, sample_steps=1, **drop).result[2]["loss"] == plain


def test_preview_sampling_decodes_with_a_vae(comfy, wan, tmp_path):
    path = tiny_models.write_tiny_wan_vae(tmp_path / "tiny_vae.safetensors")
    with torch.inference_mode():  # as loaded by ComfyUI's executor
        vae = comfy.comfy.sd.VAE(sd=comfy.comfy.utils.load_torch_file(str(path)))
        positive = [[torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(9)), {}]]
    values = dict(sample_every_n_steps=2, sample_steps=2, sample_cfg=2.0, steps=2)  # cfg 2: zeroed negative used
    out = train(comfy, wan, "t/run_vae", sample_vae=vae, sample_positive=positive, **values)
    samples = out.result[5]
    assert samples.shape == (1, 64, 64, 3) and samples.std() > 0


def test_preview_stages_split_at_the_wan22_boundary(comfy, wan):
    from types import SimpleNamespace

    from hadakron.nodes.train_sample import SamplePreviewer, SampleSettings

    access = SimpleNamespace(patcher=wan, high="high expert", boundary=0.9)
    stages = SamplePreviewer(SampleSettings(steps=2), access, None, None, None).stages()  # tiny WAN: 1, 0.889, 0
    assert [m for m, _ in stages] == ["high expert", wan]
    assert stages[0][1].tolist() == pytest.approx([1.0, 8 / 9]) and stages[1][1].tolist() == pytest.approx([8 / 9, 0])


def test_failed_preview_does_not_stop_training(comfy, wan, caplog):
    wrong = [[torch.randn(1, 8, 7), {}]]  # text dim 7: the model's cross-attention rejects it
    values = dict(steps=2, sample_every_n_steps=1, sample_steps=1, sample_positive=wrong)
    with caplog.at_level("WARNING", logger="hadakron"):
        out = train(comfy, wan, "t/run_bad_preview", **values)
    assert len(out.result[2]["loss"]) == 2 and out.result[5].shape == (1, 64, 64, 3) and not out.result[5].any()
    assert caplog.text.count("preview sample failed at step 1") == 1  # once; previews then stay off


def test_saved_file_reloads_under_auto_with_the_trained_effect(comfy, wan, run_a):
    model_out, _, _, _, path, _ = run_a.result
    with safe_open(path, "pt") as handle:
        meta = handle.metadata()
        keys = list(handle.keys())
    assert meta["hadakron.producer"] == "hadakron 0.1.0" and meta["ss_network_module"] == "networks.lokr"
    assert meta["ss_steps"] == str(STEPS) and meta["ss_lokr_factor"] == "-1" and "sshs_model_hash" in meta
    assert "lokr_factor" in keys and "lora_unet_blocks_0_ffn_0.alpha" in keys
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        loaded, _, report = node.execute(
            model=wan, adapter_name="t/run_a.safetensors", strength_model=1.0, convention="auto"
        ).result
    assert "UNMATCHED" not in report and "lycoris" in report
    for key in _target_keys(model_out):
        want = patched(model_out, key)
        assert not torch.equal(want, base(wan, key))
        torch.testing.assert_close(patched(loaded, key), want, rtol=1e-5, atol=1e-6)


def test_comfy_key_format_and_lora_model_load_natively(comfy, wan, run_a, caplog):
    sd_module, utils = comfy.comfy.sd, comfy.comfy.utils
    model_out, lora, _, _, _, _ = run_a.result
    save = comfy.node_class("HadaKronSaveAdapter")
    path = save.execute(
        lora=lora,
        model=wan,
        output_name="t/run_a_comfy",
        key_format="comfy",
        save_precision="fp32",
        steps=STEPS,
        overwrite=True,
    ).result[0]
    with safe_open(path, "pt") as handle:
        assert handle.metadata()["ss_network_module"] == "networks.lokr"
    with caplog.at_level("WARNING"):
        native, _ = sd_module.load_lora_for_models(wan, None, utils.load_torch_file(path), 1.0, 0)
    assert "not loaded" not in caplog.text
    loader = comfy.node_class("LoraModelLoader")
    from_dict = loader.execute(model=wan, lora=lora, strength_model=1.0).result[0]
    for key in _target_keys(model_out):
        want = patched(model_out, key)
        torch.testing.assert_close(patched(native, key), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(patched(from_dict, key), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_file_loads_in_lycoris(comfy, wan, run_a, algo):
    os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")
    from lycoris.kohya import create_network_from_weights

    path = run_a.result[4] if algo == "lokr" else train(comfy, wan, "t/run_loha", algo="loha", steps=2).result[4]
    root = build_tiny("wan21", seed=3).model.diffusion_model  # same names as musubi's WAN
    network, _ = create_network_from_weights(1.0, path, None, None, root)
    assert len(network.unet_loras) == TARGETS
    ours = load_file(path)
    for module in network.unet_loras:
        prefix = module.lora_name
        org = module.org_module[0]
        x = torch.randn(3, org.in_features, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = module.bypass_forward_diff(x, scale=1)
        want = F.linear(x, _reference_delta(ours, prefix, (org.out_features, org.in_features)))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _reference_delta(tensors, prefix, shape):
    """γ·ΔW from the file by the textbook formulas (LyCORIS semantics: full LoKr => γ = 1)."""
    t = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    alpha = float(t[".alpha"])
    if ".hada_w1_a" in t:
        return (
            (t[".hada_w1_a"] @ t[".hada_w1_b"]) * (t[".hada_w2_a"] @ t[".hada_w2_b"]) * alpha / t[".hada_w1_b"].shape[0]
        )
    if ".lokr_w2" in t:
        return torch.kron(t[".lokr_w1"], t[".lokr_w2"])
    return torch.kron(t[".lokr_w1"], t[".lokr_w2_a"] @ t[".lokr_w2_b"]) * alpha / t[".lokr_w2_b"].shape[0]


def _tiny_zimage():
    _, cfg = tiny_models.tiny_config("zimage")
    cfg.update(dim=256, n_heads=8, n_kv_heads=8, axes_dims=[8, 12, 12])
    from comfy.model_patcher import ModelPatcher

    model = tiny_models._build_model("ZImage", cfg, 0)
    cpu = torch.device("cpu")
    return ModelPatcher(model, load_device=cpu, offload_device=cpu)


def test_zimage_objective_equals_musubi_with_one_reversal(comfy):
    from hadakron.nodes.train_model import ComfyModelAccess
    from hadakron.training.batches import Batch
    from hadakron.training.data import TrainingItem

    mp = _tiny_zimage()
    net = mp.model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    item = TrainingItem(latent=torch.randn(16, 8, 8, generator=gen), conditioning=[[torch.randn(1, 8, 64), {}]])
    access = ComfyModelAccess(mp)
    x0, kwargs = access.prepare(Batch([item], [item.conditioning]))
    noise, t = torch.randn(x0.shape, generator=gen), torch.tensor([0.3])
    x_t = (1 - t) * x0 + t * noise
    seen = []
    handle = net.t_embedder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            ours = F.mse_loss(access.predict(x_t, t, kwargs), noise - x0)
            # musubi's Z-Image network is ComfyUI's body without its wrapper: body(x, t') = -_forward(x, 1 - t').
            t_musubi = 1 - t  # musubi feeds the reversed time (1000 - timestep) / 1000 ...
            body = -net._forward(x_t, 1 - t_musubi, **{"context": kwargs["c_crossattn"], "num_tokens": 8})
            musubi = F.mse_loss(body, x0 - noise)  # ... and regresses on the reversed target x0 - eps
            twice = F.mse_loss(access.predict(x_t, 1 - t, kwargs), x0 - noise)  # reversal applied again
    finally:
        handle.remove()
    torch.testing.assert_close(ours, musubi, rtol=1e-5, atol=1e-6)
    assert seen[0].flatten()[0].item() == pytest.approx((1 - 0.3) * net.time_scale, rel=1e-5)  # reversed once
    assert not torch.isclose(ours, twice, rtol=1e-3)


def test_checkpointing_initial_weights_history_and_dual_model(comfy, wan, run_a):
    ckpt = train(comfy, wan, "t/run_ckpt", gradient_checkpointing=True, sample_every_n_steps=3, sample_steps=1)
    torch.testing.assert_close(ckpt.result[2]["loss"], run_a.result[2]["loss"], rtol=1e-5, atol=1e-6)
    assert ckpt.result[5].shape == (2, 8, 8, 3)  # sampled through the checkpointed blocks (no grad)
    # initial weights (musubi --network_weights): lr 0 keeps them exactly
    start = train(comfy, wan, "t/run_init", initial_weights="t/run_a.safetensors", learning_rate=0.0, steps=1)
    a, b = load_file(run_a.result[4]), load_file(start.result[4])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "initial weights: 20/20 modules" in start.ui["text"][0]
    module = __import__("sys").modules[comfy.node_class("HadaKronTrainAdapter").__module__]
    history = module.training_history("0")
    assert [e["step"] for e in history] == [1] and set(history[0]) >= {"node", "step", "total", "loss", "lr", "eta_s"}
    # WAN 2.2 A14B style: one adapter across a low- and a high-noise expert
    high = build_tiny("wan21", seed=4)
    dual = comfy.node_class("HadaKronTrainAdapter")
    latents, positive = _data()
    values = dict(steps=3, network_dim=4, output_name="t/run_dual", overwrite=True, timestep_boundary=0.5)
    values.update(sample_every_n_steps=3, sample_steps=2)  # preview: high expert, then low model
    with torch.inference_mode():
        out = dual.execute(
            model=[wan], model_high=[high], latents=latents, positive=positive, **{k: [v] for k, v in values.items()}
        )
    assert len(out.result[2]["loss"]) == 3 and high.patches == {} and out.result[5].shape == (1, 8, 8, 3)
    assert all("forward" not in m.__dict__ for m in high.model.diffusion_model.modules())


def test_save_adapter_writes_core_trainer_output_with_metadata(comfy):
    mp = build_tiny("wan21", seed=5)
    latents, positive = _data(1)
    native = comfy.node_class("TrainLoraNode")
    values = dict(batch_size=1, grad_accumulation_steps=1, steps=1, learning_rate=1e-3, rank=4, optimizer="AdamW")
    values.update(loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32", algorithm="LoKr")
    values.update(gradient_checkpointing=False, existing_lora="[None]")
    newer = dict(quantized_backward=False, checkpoint_depth=1, offloading=False, bucket_mode=False, bypass_mode=False)
    known = {i.id for i in native.define_schema().inputs}
    values.update({k: v for k, v in newer.items() if k in known})  # ComfyUI 0.33+ inputs
    with torch.inference_mode():
        outputs = native.execute(
            model=[mp], latents=latents * 2, positive=positive * 2, **{k: [v] for k, v in values.items()}
        ).result
    lora = next(o for o in outputs if isinstance(o, dict) and "loss" not in o)  # 0.33 dropped the MODEL output
    save = comfy.node_class("HadaKronSaveAdapter")
    path = save.execute(
        lora=lora,
        model=mp,
        output_name="t/core_lokr",
        key_format="musubi",
        save_precision="bf16",
        steps=1,
        overwrite=True,
    ).result[0]
    with safe_open(path, "pt") as handle:
        meta, keys = handle.metadata(), set(handle.keys())
        assert handle.get_tensor("lokr_factor").dtype == torch.int64
    assert meta["ss_network_module"] == "networks.lokr" and meta["ss_base_model_version"] == "wan"
    assert "lora_unet_blocks_0_self_attn_q.lokr_w1" in keys and "lora_unet_blocks_0_norm3.diff" in keys
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        report = node.execute(
            model=mp, adapter_name="t/core_lokr.safetensors", strength_model=1.0, convention="auto"
        ).result[2]
    assert "UNMATCHED" not in report


TARGET_COUNTS = {  # tiny models: musubi presets on ComfyUI module paths (fused q/k/v count 3)
    "wan21": 20,
    "flux1": 10,  # modulation excluded
    "flux2": 10,
    "hunyuan_video": 10,  # img/txt_mod and modulation excluded
    "hunyuan_video15": 14,  # q/k/v as 3 slices each; img_mod trained (musubi's `_in` exclude matches nothing)
    "qwen_image": 14,  # img_mod/txt_mod trained (musubi's `_mod_` exclude matches nothing)
}


@pytest.mark.parametrize("family", list(TARGET_COUNTS))
def test_family_presets_on_real_models(comfy, family):
    from hadakron.nodes.model_info import model_family
    from hadakron.training.config import TrainConfig
    from hadakron.training.session import parameter_shapes
    from hadakron.training.targets import build_specs, candidate_modules

    mp = build_tiny(family)
    root, fam = mp.model.diffusion_model, model_family(mp.model)
    specs = build_specs(candidate_modules(root.named_modules(), fam, TrainConfig()), parameter_shapes(root), fam)
    names = [s.key_prefix("musubi") for s in specs]
    assert len(specs) == TARGET_COUNTS[family], names
    if family == "hunyuan_video15":
        assert {"lora_unet_double_blocks_0_img_attn_k", "lora_unet_double_blocks_0_img_mod_linear"} <= set(names)
    elif family != "qwen_image":
        assert not any("mod" in n or "norm" in n for n in names), names


@pytest.mark.parametrize("family", ["flux1", "qwen_image", "zimage"])
def test_other_families_train(comfy, family):
    mp = _tiny_zimage() if family == "zimage" else build_tiny(family)
    shape = {"flux1": (1, 16, 8, 8), "qwen_image": (1, 16, 1, 8, 8), "zimage": (1, 16, 8, 8)}[family]
    extra = {"pooled_output": torch.randn(1, 32), "guidance": 3.5} if family == "flux1" else {}
    data = ([{"samples": torch.randn(*shape)}], [[[torch.randn(1, 8, 64), extra]]])
    out = train(comfy, mp, f"t/{family}", steps=2, data=data)
    losses = out.result[2]["loss"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert mp.patches == {} and out.result[0].patches
    if family == "flux1":  # in-place residuals (img += …) under activation checkpointing
        again = train(comfy, mp, "t/flux1_ckpt", steps=2, data=data, gradient_checkpointing=True)
        torch.testing.assert_close(again.result[2]["loss"], losses, rtol=1e-5, atol=1e-6)
