"""Reference: ComfyUI 0.3.75's own trainer (``TrainLoraNode``) vs HadaKron on the tiny WAN model.

The real node trains LoRA, LoHa and LoKr for a few steps (every Linear/Conv weight gets an adapter,
every 1-D weight a ``.diff``, every bias a ``.diff_b``); ``SaveLoRA`` writes its LORA_MODEL dict; HadaKron
loads the file and must patch exactly what ComfyUI's ``LoraModelLoader`` patches from the same dict.
"""

from __future__ import annotations

import pytest
import torch

from loader_helpers import base, patched
from producers import TOL, copy_into_loras, delta, load, rel_err, zeroed
from tiny_models import build_tiny

pytestmark = [pytest.mark.comfy, pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")]
STRENGTH = 0.8
STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Training a 0.9 M-parameter model gains nothing from a thread pool; on a shared 2-core machine
    the pool's spin-waiting made these tests ~6× slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wan(comfy):
    return build_tiny("wan21", seed=8)


@pytest.fixture(scope="module")
def wan_zero(comfy):
    """Same module tree with all-zero weights: there the patched weight is ΔW itself."""
    return zeroed(build_tiny("wan21", seed=8))


def _train(comfy, mp, algorithm: str) -> dict[str, torch.Tensor]:
    """Run ``TrainLoraNode`` (``is_input_list``: every input is a list; >= 2 latents in 0.3.75)."""
    gen = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 16, 1, 8, 8, generator=gen)} for _ in range(2)]
    positive = [[[torch.randn(1, 6, 64, generator=gen), {}]]]
    inputs = dict(
        batch_size=1,
        steps=STEPS,
        grad_accumulation_steps=1,
        learning_rate=0.01,
        rank=4,
        optimizer="AdamW",
        loss_function="MSE",
        seed=0,
        training_dtype="fp32",
        lora_dtype="fp32",
        algorithm=algorithm,
        gradient_checkpointing=False,
        existing_lora="[None]",
    )
    node = comfy.node_class("TrainLoraNode")
    out = node.execute(model=[mp], latents=latents, positive=positive, **{k: [v] for k, v in inputs.items()})
    assert out.result[3] == STEPS
    return out.result[1]


def _save(comfy, lora: dict, algorithm: str) -> str:
    """``SaveLoRA`` writes into ComfyUI's output folder; copy the file into the loras folder."""
    from pathlib import Path

    comfy.node_class("SaveLoRA").execute(lora=lora, prefix=f"hk_trainer/{algorithm}", steps=STEPS)
    folder = Path(comfy.folder_paths.get_output_directory()) / "hk_trainer"
    saved = max(folder.glob(f"{algorithm}_{STEPS}_steps_*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    return copy_into_loras(comfy, saved, "comfy_trainer")


def _native(comfy, mp, lora):
    with torch.inference_mode():
        return comfy.node_class("LoraModelLoader").execute(model=mp, lora=lora, strength_model=STRENGTH).result[0]


@pytest.mark.parametrize("algorithm", ["LoRA", "LoHa", "LoKr"])
def test_trainer_file_loads_like_comfy_lora_model_loader(comfy, wan, wan_zero, algorithm):
    lora = _train(comfy, wan, algorithm)
    assert any(k.endswith(".diff") for k in lora) and any(k.endswith(".diff_b") for k in lora)
    name = _save(comfy, lora, algorithm)
    ours, report = load(comfy, wan_zero, name, STRENGTH)
    native = _native(comfy, wan_zero, lora)
    assert set(ours.patches) == set(native.patches) and len(native.patches) > 60, report
    errors = {key: rel_err(delta(ours, wan_zero, key), delta(native, wan_zero, key)) for key in native.patches}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst}: relative error {errors[worst]:.2e}\n{report}"
    _check_real_base(comfy, wan, name, lora)


def _check_real_base(comfy, wan, name, lora):
    """On the trained model's own (non-zero) base the baked weights agree too, biases and norms included."""
    ours, _ = load(comfy, wan, name, STRENGTH)
    native = _native(comfy, wan, lora)
    for key in native.patches:
        torch.testing.assert_close(patched(ours, key), patched(native, key), rtol=1e-5, atol=1e-6)
    bias = "diffusion_model.blocks.0.self_attn.q.bias"
    want = base(wan, bias) + STRENGTH * lora["diffusion_model.blocks.0.self_attn.q.diff_b"]
    torch.testing.assert_close(patched(ours, bias), want, rtol=1e-6, atol=1e-7)
