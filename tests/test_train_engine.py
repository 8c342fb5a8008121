"""Training engine without ComfyUI: adapter maths and gradients, targets and names, timesteps,
schedules, data order, metadata/hashes, factor precedence."""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from hadakron.common.atomic import TEMP_PREFIX
from hadakron.training.batches import BatchStream, epoch_batches, shuffle_tags
from hadakron.training.checkpoint import load_state, output_names, resolve_factor, save_adapter_file, state_path
from hadakron.training.config import TrainConfig, apply_network_args, parse_network_args, ss_network_args
from hadakron.training.data import AdapterDataset, TrainingItem
from hadakron.training.metadata import RunInfo, file_hashes, full_metadata
from hadakron.training.modules import TrainLoHa, TrainLoKr, TrainLoRA, kron_linear
from hadakron.training.network import AdapterNetwork
from hadakron.training.optim import ScheduleMultiplier, build_optimizer, parse_optimizer_args
from hadakron.training.targets import build_specs, candidate_modules, musubi_names
from hadakron.training.timesteps import loss_weight, sample_t, shift


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _dense(adapter) -> torch.Tensor:
    return adapter.weights_type(**dict(adapter.named_parameters(recurse=False))).delta(
        (adapter.out_dim, adapter.in_dim)
    )


LOKR_CASES = [
    dict(rank=4),  # w2 low-rank
    dict(rank=64),  # full w2 (rank >= max/2)
    dict(rank=4, lokr_options=(-1, True, False)),  # w1 low-rank too
    dict(rank=4, lokr_options=(4, False, True)),  # full_matrix, factor 4
]


@pytest.mark.parametrize("case", LOKR_CASES)
def test_lokr_bypass_gradients_equal_dense(case):
    adapter = TrainLoKr(96, 80, (), case["rank"], 2.0, lokr_options=case.get("lokr_options"))
    _randomise(adapter)
    x = torch.randn(3, 5, 80, requires_grad=True)
    y = adapter.add_to(torch.zeros(3, 5, 96), x)  # the fused path training uses
    ref_params = {n: p.detach().clone().requires_grad_(True) for n, p in adapter.named_parameters()}
    ref_adapter = adapter.weights_type(**ref_params)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.linear(x_ref, ref_adapter.delta((96, 80))) * adapter.scale()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter(x), y, rtol=1e-5, atol=1e-5)  # the plain delta path
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for name, p in adapter.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(96, 80), (40, 1200)])
def test_loha_bypass_gradients_equal_dense(shape):
    adapter = TrainLoHa(*shape, (), 4, 3.0)
    _randomise(adapter, 1)
    x = torch.randn(7, shape[1], requires_grad=True)
    y = adapter.add_to(torch.zeros(7, shape[0]), x)
    ref = {n: p.detach().clone().requires_grad_(True) for n, p in adapter.named_parameters()}
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.linear(x_ref, ((ref["w1a"] @ ref["w1b"]) * (ref["w2a"] @ ref["w2b"]))) * 0.75
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for name, p in adapter.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].grad, rtol=1e-4, atol=1e-4)


def test_init_is_zero_delta_alpha_is_a_buffer_and_scales():
    for adapter in (TrainLoRA(64, 48, (), 8, 4.0), TrainLoHa(64, 48, (), 8, 4.0), TrainLoKr(64, 48, (), 2, 4.0)):
        assert torch.count_nonzero(_dense(adapter)) == 0
        assert "alpha" not in dict(adapter.named_parameters())
        assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert TrainLoRA(64, 48, (), 8, 4.0).scale() == 0.5
    full = TrainLoKr(64, 48, (), 64, 4.0)
    assert full.rank is None and full.scale() == 1.0


def test_conv_adapters_match_materialised_kernel():
    x = torch.randn(2, 6, 5, 5)
    for adapter in (TrainLoRA(8, 6, (3, 3), 2, 2.0), TrainLoHa(8, 6, (3, 3), 2, 2.0), TrainLoKr(8, 6, (3, 3), 2, 2.0)):
        _randomise(adapter, 2)
        kernel = adapter.weights_type(**dict(adapter.named_parameters(recurse=False))).delta((8, 6, 3, 3))
        want = F.conv2d(x, kernel, padding=1) * adapter.scale()
        torch.testing.assert_close(adapter(x, {"padding": 1}), want, rtol=1e-5, atol=1e-5)


def test_kron_linear_matches_torch_kron():
    w1, w2 = torch.randn(6, 4), torch.randn(5, 3)
    x = torch.randn(2, 3, 12)
    torch.testing.assert_close(kron_linear(x, w1, w2=w2), F.linear(x, torch.kron(w1, w2)), rtol=1e-5, atol=1e-5)


def test_dropouts_rescale_and_reuse_masks_within_a_micro_step():
    adapter = TrainLoKr(32, 32, (), 2, 2.0, dropouts=(0.0, 0.5, 0.0))
    _randomise(adapter)
    adapter.generator = torch.Generator().manual_seed(0)
    adapter.train()
    x = torch.randn(4, 32)
    first, again = adapter(x), adapter(x)
    torch.testing.assert_close(first, again)  # checkpoint recompute sees the same mask
    dropped = (first.abs().sum(0) == 0).sum()
    assert 0 < dropped < 32
    adapter.clear_masks()
    adapter.eval()
    torch.testing.assert_close(adapter(x), F.linear(x, _dense(adapter)) * adapter.scale())


class _Block(torch.nn.Module):
    def __init__(self, fused: bool):
        super().__init__()
        self.attention = torch.nn.Module()
        if fused:
            self.attention.qkv = torch.nn.Linear(16, 48)
            self.attention.out = torch.nn.Linear(16, 16)
            self.adaLN_modulation = torch.nn.Sequential(torch.nn.Linear(16, 64))
        else:
            self.self_attn = torch.nn.Module()
            self.self_attn.q = torch.nn.Linear(16, 16)
            self.self_attn.norm_q = torch.nn.LayerNorm(16)
            self.ffn = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.conv = torch.nn.Conv2d(4, 4, 3)


def _tree(kind: str) -> torch.nn.Module:
    root = torch.nn.Module()
    if kind == "wan":
        root.blocks = torch.nn.ModuleList([_Block(False), _Block(False)])
        root.head = torch.nn.Module()
        root.head.head = torch.nn.Linear(16, 16)
    else:
        root.layers = torch.nn.ModuleList([_Block(True)])
        root.noise_refiner = torch.nn.ModuleList([_Block(True)])
    return root


def _shapes(root):
    return {f"diffusion_model.{k}": tuple(v.shape) for k, v in root.named_parameters()}


def test_wan_preset_targets_and_names(caplog):
    root = _tree("wan")
    with caplog.at_level(logging.WARNING, logger="hadakron"):
        paths = candidate_modules(root.named_modules(), "wan", TrainConfig())
    assert paths == ["blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.0.ffn.2"] + [
        p.replace("0", "1", 1) for p in ("blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.0.ffn.2")
    ]
    assert "conv" in caplog.text  # convs skipped with a warning
    specs = build_specs(paths, _shapes(root), "wan")
    assert specs[0].key_prefix("musubi") == "lora_unet_blocks_0_self_attn_q"
    assert specs[0].key_prefix("comfy") == "diffusion_model.blocks.0.self_attn.q"
    with_conv = candidate_modules(root.named_modules(), "wan", TrainConfig(train_conv=True, exclude="ffn"))
    assert with_conv == ["blocks.0.self_attn.q", "blocks.0.conv", "blocks.1.self_attn.q", "blocks.1.conv"]
    rescued = candidate_modules(root.named_modules(), "wan", TrainConfig(include=r"^head\.head$"))
    assert "head.head" in rescued


def test_zimage_fused_qkv_trains_three_musubi_slices():
    root = _tree("z_image")
    paths = candidate_modules(root.named_modules(), "z_image", TrainConfig())
    assert paths == ["layers.0.attention.qkv", "layers.0.attention.out"]  # no modulation, no refiner
    specs = build_specs(paths, _shapes(root), "z_image")
    names = [(s.key_prefix("musubi"), s.offset, s.out_dim) for s in specs]
    assert names == [
        ("lora_unet_layers_0_attention_to_q", (0, 0, 16), 16),
        ("lora_unet_layers_0_attention_to_k", (0, 16, 16), 16),
        ("lora_unet_layers_0_attention_to_v", (0, 32, 16), 16),
        ("lora_unet_layers_0_attention_to_out_0", None, 16),
    ]
    assert specs[0].key_prefix("comfy") == "diffusion_model.layers.0.attention.to_q"
    assert musubi_names("hunyuan_video", "double_blocks.3.img_mlp.0") == ("double_blocks.3.img_mlp.fc1",)


def test_unsupported_family_is_named():
    from hadakron.common.errors import UnsupportedError
    from hadakron.training.targets import require_supported

    with pytest.raises(UnsupportedError, match="framepack"):
        require_supported("framepack", "HunyuanVideo")
    with pytest.raises(UnsupportedError, match=r"unknown \(SDXL\)"):
        require_supported(None, "SDXL")


def test_sliced_network_forward_equals_dense_on_fused_weight():
    root = _tree("z_image")
    paths = candidate_modules(root.named_modules(), "z_image", TrainConfig())
    config = TrainConfig(algo="loha", network_dim=2, family="z_image")
    network = AdapterNetwork(build_specs(paths, _shapes(root), "z_image"), config, torch.Generator().manual_seed(0))
    _randomise(network)
    qkv = root.layers[0].attention.qkv
    x = torch.randn(3, 16)
    with network.attached(root):
        got = qkv(x)
    assert "forward" not in qkv.__dict__  # restored
    deltas = [_dense(a) * a.scale() for s, a in network.items() if s.path.endswith("qkv")]
    torch.testing.assert_close(got, F.linear(x, qkv.weight + torch.cat(deltas), qkv.bias), rtol=1e-5, atol=1e-5)


def test_saved_tensors_alpha_and_factor():
    root = _tree("wan")
    specs = build_specs(candidate_modules(root.named_modules(), "wan", TrainConfig()), _shapes(root), "wan")
    full = AdapterNetwork(specs, TrainConfig(network_dim=64, factor=4), torch.Generator())
    tensors = full.state_dict_for_file("musubi", torch.bfloat16)
    assert tensors["lokr_factor"].dtype == torch.int64 and int(tensors["lokr_factor"]) == 4
    # full-matrix LoKr: portable alpha w2.shape[0] // w1.shape[0] (16x16 -> w1 4x4, w2 4x4)
    assert float(tensors["lora_unet_blocks_0_self_attn_q.alpha"]) == 1.0
    assert tensors["lora_unet_blocks_0_self_attn_q.lokr_w1"].dtype == torch.bfloat16
    comfy = full.state_dict_for_file("comfy", torch.float32, with_factor=False)
    assert "lokr_factor" not in comfy and "diffusion_model.blocks.1.ffn.2.lokr_w2" in comfy


@pytest.mark.parametrize("mode", ["uniform", "sigmoid", "shift", "flux_shift", "flux2_shift", "qwen_shift", "logsnr"])
def test_timestep_modes_are_in_range_and_seeded(mode):
    config = TrainConfig(timestep_sampling=mode, discrete_flow_shift=3.0, family="wan")
    a = sample_t(config, 256, torch.Generator().manual_seed(1), (1, 16, 1, 32, 32))
    b = sample_t(config, 256, torch.Generator().manual_seed(1), (1, 16, 1, 32, 32))
    assert torch.equal(a, b) and bool(((a >= 0) & (a <= 1)).all())


def test_timestep_formulas():
    gen = torch.Generator().manual_seed(0)
    n = torch.randn(8, generator=torch.Generator().manual_seed(0))
    got = sample_t(TrainConfig(timestep_sampling="shift", discrete_flow_shift=3.0), 8, gen, (1, 4, 8, 8))
    torch.testing.assert_close(got, shift(torch.sigmoid(n), 3.0))
    assert TrainConfig(family="wan").resolved_timesteps() == ("shift", 3.0)
    assert TrainConfig(family="flux").resolved_timesteps()[0] == "flux_shift"
    sigma = sample_t(TrainConfig(timestep_sampling="sigma"), 1000, torch.Generator().manual_seed(0), (1, 4, 8, 8))
    assert sigma.min() >= 0.001 and sigma.max() <= 1.0 and torch.allclose(sigma * 1000, (sigma * 1000).round())
    squeezed = sample_t(
        TrainConfig(timestep_sampling="uniform", min_timestep=200, max_timestep=400), 500, gen, (1, 8, 8)
    )
    assert squeezed.min() >= 0.2 and squeezed.max() <= 0.4
    strict = TrainConfig(timestep_sampling="uniform", min_timestep=900, preserve_distribution_shape=True)
    assert sample_t(strict, 50, gen, (1, 8, 8)).min() >= 0.9
    t = torch.tensor([0.25, 0.5])
    torch.testing.assert_close(
        loss_weight(TrainConfig(weighting_scheme="cosmap"), t), 2 / (math.pi * (1 - 2 * t + 2 * t**2))
    )
    torch.testing.assert_close(loss_weight(TrainConfig(weighting_scheme="sigma_sqrt"), t), t**-2)
    assert loss_weight(TrainConfig(weighting_scheme="logit_normal"), t) is None


def test_schedules_and_optimizers():
    cosine = ScheduleMultiplier("cosine", 10, 2)
    assert [round(cosine(s), 4) for s in (0, 1, 2, 6, 10)] == [0.3333, 0.6667, 1.0, 0.5, 0.0]
    assert ScheduleMultiplier("linear", 10, 0)(5) == 0.5 and ScheduleMultiplier("constant", 10, 0)(9) == 1.0
    assert parse_optimizer_args("betas=(0.9,0.99) eps=1e-6") == {"betas": (0.9, 0.99), "eps": 1e-6}
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name in ("AdamW", "Adafactor", "SGD"):
        opt = build_optimizer(params, TrainConfig(optimizer=name, learning_rate=0.1))
        assert opt.param_groups[0]["lr"] == 0.1


def test_network_args_and_factor_precedence(caplog):
    config = apply_network_args(TrainConfig(network_args="factor=8 conv_dim=4 exclude_patterns=['.*ffn.*'] foo=1"))
    assert (config.factor, config.conv_dim, config.exclude_patterns, config.explicit_factor) == (
        8,
        4,
        [".*ffn.*"],
        True,
    )
    assert ss_network_args(config) == {"factor": "8", "conv_dim": "4", "exclude_patterns": "['.*ffn.*']", "foo": "1"}
    assert parse_network_args('a="x y"') == {"a": "x y"}
    with caplog.at_level(logging.INFO, logger="hadakron"):
        assert resolve_factor(4, 8, None) == 4 and "differs from persisted factor=8" in caplog.text
        assert resolve_factor(None, 8, 16) == 8
        assert resolve_factor(None, None, 16) == 16
        assert resolve_factor(None, None, None) == -1 and "assuming factor=-1" in caplog.text


def _dataset(n=5):
    items = [
        TrainingItem(
            latent=torch.zeros(4, 2 + (i % 2), 2), conditioning=[[torch.zeros(1, 2, 3), {}]], caption="a, b, c"
        )
        for i in range(n)
    ]
    items[0].repeats = 2
    return AdapterDataset(items=items)


def test_batches_are_seeded_bucketed_and_resumable():
    data = _dataset()
    batches = epoch_batches(data, 3, 0, 2)
    assert sorted(i for b in batches for i in b) == [0, 0, 1, 2, 3, 4]
    assert all(len({tuple(data.items[i].latent.shape) for i in b}) == 1 for b in batches)
    assert batches == epoch_batches(data, 3, 0, 2) and batches != epoch_batches(data, 3, 1, 2)
    config = TrainConfig(batch_size=2, caption_dropout=0.5, seed=3)
    a = BatchStream(data, config)
    [a.next() for _ in range(5)]
    b = BatchStream(data, config)
    b.load_state(a.state())
    assert [x.items for x in (a.next(), a.next())] == [y.items for y in (b.next(), b.next())]
    assert sorted(shuffle_tags("k, a, b, c", 1, torch.Generator().manual_seed(0)).split(", ")[1:]) == ["a", "b", "c"]


def test_metadata_and_hashes(tmp_path):
    config = TrainConfig(algo="lokr", family="wan", output_name="x", factor=4)
    tensors = {"lora_unet_a.lokr_w1": torch.ones(2, 2), "lokr_factor": torch.tensor(4)}
    meta = full_metadata(config, RunInfo(total_steps=10), 10, 1, tensors)
    assert meta["ss_network_module"] == "networks.lokr" and meta["ss_base_model_version"] == "wan"
    assert json.loads(meta["ss_network_args"]) == {"factor": "4"} and meta["ss_lokr_factor"] == "4"
    assert meta["modelspec.architecture"] == "wan2.1/lora" and meta["hadakron.producer"] == "hadakron 0.1.0"
    assert full_metadata(TrainConfig(algo="lora", family="wan"), RunInfo(), 1, 1, tensors)["ss_network_module"] == (
        "networks.lora_wan"
    )
    path = save_adapter_file(output_names(tmp_path, "x").final(), tensors, meta, overwrite=False)
    with safe_open(str(path), "pt") as handle:
        stored = handle.metadata()
        assert handle.get_tensor("lokr_factor").dtype == torch.int64
    assert file_hashes(tensors, stored) == {k: stored[k] for k in ("sshs_model_hash", "sshs_legacy_hash")}
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    import hashlib

    assert hashlib.sha256(raw[8 + header :]).hexdigest() == stored["sshs_model_hash"]


def test_output_names_are_sanitised(tmp_path):
    names = output_names(tmp_path, "sub/my:lokr.pt")
    assert names.final() == tmp_path / "sub" / "my_lokr.pt"
    assert names.step(10).name == "my_lokr-step00000010.pt"


def _child(folder, name: str, *extra: str) -> subprocess.Popen:
    """Start ``engine_train_child.py`` (engine-level training in a fresh process)."""
    cmd = [sys.executable, str(Path(__file__).with_name("engine_train_child.py")), str(folder), name, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _wait_for_line(proc: subprocess.Popen, wanted: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                line = proc.stdout.readline()
                assert line, f"child ended before {wanted!r}: {proc.stderr.read()[-3000:]}"
                if line.strip() == wanted:
                    return
    raise AssertionError(f"child did not print {wanted!r} within {timeout}s")


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and PID liveness checks are POSIX")
def test_kill_9_mid_checkpoint_then_resume_equals_uninterrupted(tmp_path):
    """kill -9 while checkpoint 4 is being written: checkpoint 2 stays usable, no partial file is ever
    published, and resuming from it in a fresh process gives bit-identical weights and losses."""
    from engine_train_child import EVERY, STEPS

    folder = tmp_path / "loras"
    reference = _child(tmp_path / "ref", "run")
    killed = _child(folder, "run", "--pause-publishing", "run-step00000004.safetensors")
    try:
        _wait_for_line(killed, "PAUSED")  # step-4 file fully written to its temp file, not yet renamed
        names = output_names(folder, "run")
        assert names.step(2).is_file() and state_path(names.step(2)).is_file()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    want = _finish(reference)
    left = sorted(p.name for p in folder.iterdir())
    temps = [n for n in left if n.startswith(TEMP_PREFIX) and n.endswith(".part")]
    # nothing partial under a final name: the complete checkpoint 2, plus the killed writer's hidden temp file
    assert len(temps) == 1 and left == temps + ["run-step00000002.hkstate", "run-step00000002.safetensors"], left
    assert load_state(state_path(names.step(2)))["step"] == 2 and load_file(str(names.step(2)))

    got = _finish(_child(folder, "run", "--resume", str(names.step(EVERY))))
    assert got["losses"] == want["losses"] and len(got["losses"]) == STEPS  # losses after the resume point too
    a, b = load_file(want["final"]), load_file(got["final"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {v.dtype for v in a.values()} == {torch.float32, torch.int64}  # fp32 weights (+ the lokr_factor buffer)
    for step in (4, 6):  # checkpoints written after the resume equal the uninterrupted run's
        ref_ckpt = load_file(str(output_names(tmp_path / "ref", "run").step(step)))
        assert all(torch.equal(v, load_file(str(names.step(step)))[k]) for k, v in ref_ckpt.items())
    assert not [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]  # the killed run's temp is gone
