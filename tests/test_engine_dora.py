"""DoRA with each producer's semantics: LyCORIS (dora_scale, both axes, strength) and PEFT."""

import os

import pytest
import torch

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")

from hadakron.adapters import LoRAWeights, ModuleAdapter, apply_to_weight, parse_adapter_state_dict  # noqa: E402


@pytest.mark.parametrize("wd_on_out", [True, False])
@pytest.mark.parametrize("strength", [1.0, 0.5, 0.0])
def test_lycoris_dora_matches_weight_decompose(wd_on_out, strength):
    from lycoris.functional.general import weight_decompose

    g = torch.Generator().manual_seed(0)
    out, inp, rank = 24, 16, 4
    base = torch.randn(out, inp, generator=g)
    up, down = torch.randn(out, rank, generator=g) * 0.3, torch.randn(rank, inp, generator=g) * 0.3
    magnitude = torch.rand(out, 1, generator=g) + 0.5 if wd_on_out else torch.rand(1, inp, generator=g) + 0.5
    adapter = ModuleAdapter("m", LoRAWeights(up=up, down=down), alpha=2.0, dora_scale=magnitude)
    ours = apply_to_weight(adapter, base.clone(), strength=strength, scale=0.5)
    ref = weight_decompose(base + 0.5 * up @ down, magnitude, strength, wd_on_out, backend="torch")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    if strength == 0.0:  # LyCORIS semantics: strength only interpolates the rescale, ΔW stays
        torch.testing.assert_close(ours, base + 0.5 * up @ down)


def test_peft_dora_matches_merge_and_unload():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24))
    reference = torch.nn.Sequential(torch.nn.Linear(16, 24))
    reference.load_state_dict(model.state_dict())
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], use_dora=True))
    layer = peft_model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.3)
        layer.lora_magnitude_vector["default"].weight.mul_(1.3)
    state = {k.replace(".default", ""): v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    merged = peft_model.merge_and_unload()[0].weight.detach()
    adapter = next(parse_adapter_state_dict(state, peft_config={"r": 4, "lora_alpha": 8}).adapters())
    assert adapter.dora_kind == "peft"
    ours = apply_to_weight(adapter, reference[0].weight.detach().clone(), strength=1.0, scale=8 / 4)
    torch.testing.assert_close(ours, merged, rtol=1e-5, atol=1e-6)
