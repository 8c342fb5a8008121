"""Every trainable family in this ComfyUI, trained end to end through ``HadaKronTrainAdapter`` (issue #7).

For each family a tiny real ComfyUI model (CPU) is trained as a LoKr by the node itself (is_input_list
values, inference mode, as ComfyUI's executor runs it), and the test proves:

* every step's loss is finite, and the velocity loss on one fixed batch (fixed noise, fixed timesteps)
  is lower after overfitting the single training item than before (the base model), both with the
  node's MODEL output and with the saved file re-applied;
* the saved file round-trips through HadaKron's loader (``apply_adapter``): every trained module
  matched, none unmatched or shape-mismatched, the patched weights equal the trainer's own;
* the saved module names are musubi's for that family (HunyuanVideo 1.5 / Z-Image: separate q/k/v, never
  ComfyUI's fused qkv) and each either equals a ComfyUI module name or is mapped onto one by the
  family's rename rules in ``keymap/families.py``;
* FLUX.1 Kontext and Qwen-Image-Edit items carry control latents that reach the model as ComfyUI
  ``ref_latents`` (exact tensors) and change the loss for the same seed.

Also: one bf16 run (bf16 model weights and compute, fp32 adapter parameters and gradients, as musubi),
FramePack refused with an error naming the family, Kandinsky 5 only where ComfyUI has it (0.33+).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import tiny_models
from loader_helpers import patched
from tiny_models import build_tiny

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_torch_thread")]

STEPS = 50
LEARNING_RATE = 5e-2
IMPROVEMENT = 0.97  # fixed-batch loss after overfitting < 0.97 x before (tiny models: 0.47-0.93)
EVAL_T = (0.25, 0.5, 0.75)


def _names(blocks: list[str], parts: list[str]) -> frozenset[str]:
    return frozenset(f"{b}_{p}" for b in blocks for p in parts)


_WAN = _names(
    ["blocks_0", "blocks_1"],
    [f"{a}_{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn_0", "ffn_2"],
)
_FLUX = _names(
    ["double_blocks_0"], [f"{s}_{p}" for s in ("img", "txt") for p in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2")]
) | _names(["single_blocks_0"], ["linear1", "linear2"])
_HV = _names(
    ["double_blocks_0"],
    [f"{s}_{p}" for s in ("img", "txt") for p in ("attn_qkv", "attn_proj", "mlp_fc1", "mlp_fc2")],
) | _names(["single_blocks_0"], ["linear1", "linear2"])
_HV15 = _names(  # musubi: separate q/k/v; img_mod/txt_mod trained (its `_in` exclude matches nothing)
    ["double_blocks_0"],
    [f"{s}_{p}" for s in ("img", "txt") for p in ("attn_q", "attn_k", "attn_v", "attn_proj")]
    + [f"{s}_{p}" for s in ("img", "txt") for p in ("mlp_fc1", "mlp_fc2", "mod_linear")],
)
_QWEN = _names(  # img_mod/txt_mod trained (musubi's `_mod_` exclude matches nothing)
    ["transformer_blocks_0"],
    [f"attn_{p}" for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out_0")]
    + ["attn_to_add_out", "img_mod_1", "txt_mod_1"]
    + [f"{s}_mlp_{p}" for s in ("img", "txt") for p in ("net_0_proj", "net_2")],
)
_ZIMAGE = _names(  # musubi: to_q/to_k/to_v/to_out_0, never ComfyUI's fused qkv
    ["layers_0"], ["attention_to_q", "attention_to_k", "attention_to_v", "attention_to_out_0"]
) | _names(["layers_0"], ["feed_forward_w1", "feed_forward_w2", "feed_forward_w3"])


def _custom(cls_name: str, base: str, **changes):
    """A tiny model of ``base``'s recipe with ``changes``, built as ComfyUI config class ``cls_name``."""
    from comfy.model_patcher import ModelPatcher

    _, cfg = tiny_models.tiny_config(base)
    cfg.update(changes)
    model = tiny_models._build_model(cls_name, tiny_models._drop_newer_keys(cfg), 0)
    cpu = torch.device("cpu")
    return ModelPatcher(model, load_device=cpu, offload_device=cpu)


@dataclass(frozen=True)
class Case:
    """One family: how to build its tiny model and data, what the trainer must write."""

    family: str  # HadaKron family name the model is detected as
    build: Callable[[], object]
    latent: tuple[int, ...]  # dataset layout (no batch dim)
    names: frozenset[str]  # musubi module names (lora_unet_ stripped)
    extra: dict = field(default_factory=dict)  # conditioning options (as the family's text encoder sets them)
    control: bool = False  # edit family: items carry control latents
    comfy_class: str = ""  # required comfy.model_base class (feature detection)


_POOLED = {"pooled_output": None}  # what a text encoder without a pooled output puts in CONDITIONING
CASES = {
    "wan21": Case("wan", lambda: build_tiny("wan21"), (16, 1, 8, 8), _WAN),
    # WAN 2.2 TI2V-5B (48-channel VAE, WAN22 class); A14B is the WAN 2.1 architecture (dual expert run:
    # test_train_comfy.py::test_checkpointing_initial_weights_history_and_dual_model).
    "wan22_ti2v_5b": Case("wan", lambda: _custom("WAN22_T2V", "wan21", in_dim=48, out_dim=48), (48, 1, 8, 8), _WAN),
    "hunyuan_video": Case(
        "hunyuan_video",
        lambda: build_tiny("hunyuan_video"),
        (16, 1, 8, 8),
        _HV,
        {"pooled_output": torch.randn(1, 32, generator=torch.Generator().manual_seed(1)), "guidance": 6.0},
    ),
    "hunyuan_video15": Case("hunyuan_video_1_5", lambda: build_tiny("hunyuan_video15"), (32, 1, 8, 8), _HV15, _POOLED),
    "flux1_kontext": Case(
        "flux",
        lambda: build_tiny("flux1"),
        (16, 8, 8),
        _FLUX,
        {"pooled_output": torch.randn(1, 32, generator=torch.Generator().manual_seed(2)), "guidance": 2.5},
        control=True,
    ),
    "flux2_dev": Case("flux2", lambda: _custom("Flux2", "flux2", guidance_embed=True), (128, 8, 8), _FLUX, _POOLED),
    # Klein: no guidance embedding. ComfyUI 0.3.75 cannot detect a real Klein file (48 heads hard-coded), but
    # its Flux2 class runs the architecture, which is what the trainer sees.
    "flux2_klein": Case("flux2", lambda: build_tiny("flux2"), (128, 8, 8), _FLUX, _POOLED),
    "qwen_image": Case("qwen_image", lambda: build_tiny("qwen_image"), (16, 1, 8, 8), _QWEN, _POOLED),
    "qwen_image_edit": Case(
        "qwen_image", lambda: build_tiny("qwen_image"), (16, 1, 8, 8), _QWEN, _POOLED, control=True
    ),
    "z_image": Case(  # ZImage config class (dim >= 256 for its modulation, architectures.md §9.1)
        "z_image",
        lambda: _custom("ZImage", "zimage", dim=256, n_heads=8, n_kv_heads=8, axes_dims=[8, 12, 12]),
        (16, 8, 8),
        _ZIMAGE,
        _POOLED,
    ),
    "kandinsky5": Case("kandinsky5", lambda: None, (), frozenset(), comfy_class="Kandinsky5"),
}


def _item(case: Case, seed: int = 0, control: bool | None = None):
    from hadakron.training.data import TrainingItem

    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(*case.latent, generator=gen)
    cond = [[torch.randn(1, 8, 64, generator=gen), dict(case.extra)]]
    controls = [torch.randn(*case.latent, generator=gen)] if (case.control if control is None else control) else []
    return TrainingItem(latent=latent, conditioning=cond, control_latents=controls, source="item")


def _train(comfy, model, item, name: str, **widgets):
    """Run HadaKronTrainAdapter as ComfyUI's executor does (input lists, inference mode)."""
    from hadakron.training.data import AdapterDataset

    values = dict(steps=STEPS, learning_rate=LEARNING_RATE, network_dim=4, output_name=name, overwrite=True, seed=3)
    values.update(widgets)
    node = comfy.node_class("HadaKronTrainAdapter")
    with torch.inference_mode():
        out = node.execute(model=[model], dataset=[AdapterDataset(items=[item])], **{k: [v] for k, v in values.items()})
    return out.result


def fixed_loss(model, item, seed: int = 123) -> float:
    """Velocity MSE of ``model`` (patches applied as ComfyUI loads it) on one fixed batch.

    The batch is ``item`` at each timestep of ``EVAL_T`` with seeded noise: ``x_t = (1-t)·x0 + t·ε``,
    target ``ε − x0``, through the trainer's own model access (conditioning, control latents included).
    """
    from hadakron.nodes.train_model import ComfyModelAccess, training_patcher
    from hadakron.training.batches import Batch

    with training_patcher(model) as patcher, torch.no_grad():
        access = ComfyModelAccess(patcher)
        x0, kwargs = access.prepare(Batch([item] * len(EVAL_T), [item.conditioning] * len(EVAL_T)))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        t = torch.tensor(EVAL_T)
        tt = t.view(-1, *([1] * (x0.dim() - 1)))
        pred = access.predict((1 - tt) * x0 + tt * noise, t, kwargs)
        return float(F.mse_loss(pred.float(), noise - x0))


def _model_or_skip(comfy, case: Case, name: str):
    if case.comfy_class and not hasattr(comfy.comfy.model_base, case.comfy_class):
        from comfyui_version import __version__ as version

        pytest.skip(f"{name}: ComfyUI {version} has no {case.comfy_class} model (added in 0.33)")
    model = case.build()
    if model is None:
        pytest.skip(f"{name}: no tiny recipe verified for this ComfyUI yet")
    return model


class _RefLatents:
    """Forward pre-hook on the diffusion model recording the ``ref_latents`` each forward receives."""

    def __init__(self, net: torch.nn.Module):
        self.seen: list = []
        self.handle = net.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        refs = kwargs.get("ref_latents")
        self.seen.append(None if refs is None else [r.detach().clone() for r in refs])

    def remove(self):
        self.handle.remove()


def _rule_target(family: str, name: str):
    """``(ComfyUI module, slice rule)`` a musubi name is renamed to by ``keymap.families.RULES``, or None."""
    from hadakron.keymap.families import RULES

    hits = [(rule.apply(name), rule.slice_fn) for rule in RULES.get(family, ()) if rule.apply(name)]
    assert len(hits) <= 1, (name, hits)
    return hits[0] if hits else None


def _assert_musubi_names(case: Case, model, modules: set[str]) -> None:
    assert modules == set(case.names), sorted(modules ^ set(case.names))
    comfy_modules = {path.replace(".", "_"): m for path, m in model.model.diffusion_model.named_modules() if path}
    sliced: dict[str, list] = {}
    for name in modules:
        hit = _rule_target(case.family, name)
        if hit is None:  # musubi's name is ComfyUI's own module name
            assert isinstance(comfy_modules.get(name), torch.nn.Linear), name
            continue
        target, slice_fn = hit
        assert name not in comfy_modules and isinstance(comfy_modules.get(target), torch.nn.Linear), (name, target)
        if slice_fn is not None:
            weight = comfy_modules[target].weight
            sliced.setdefault(target, []).append(slice_fn(tuple(weight.shape)))
    for target, slices in sliced.items():  # q/k/v adapters tile the fused weight exactly
        rows = comfy_modules[target].weight.shape[0]
        assert sorted(slices) == [(i * rows // 3, rows // 3) for i in range(3)], (target, slices)
    if case.family in ("hunyuan_video_1_5", "z_image"):
        assert not any(n.endswith(("attn_qkv", "attention_qkv")) for n in modules), sorted(modules)
        assert sliced, "expected separate q/k/v adapters on the fused weight"


@pytest.mark.parametrize("name", list(CASES))
def test_family_trains_saves_and_round_trips(comfy, name):
    from hadakron.nodes.apply import ApplyRequest, apply_adapter
    from hadakron.nodes.model_info import model_family
    from hadakron.training.metadata import FAMILY_META

    case = CASES[name]
    model = _model_or_skip(comfy, case, name)
    assert model_family(model.model) == case.family
    item = _item(case)
    before = fixed_loss(model, item)
    recorder = _RefLatents(model.model.diffusion_model) if case.control else None
    try:
        model_out, _, losses, _, path, _ = _train(comfy, model, item, f"fam/{name}")
    finally:
        if recorder is not None:
            recorder.remove()

    # losses: finite; the fixed batch is fitted better than by the base model
    losses = losses["loss"]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    after = fixed_loss(model_out, item)
    assert math.isfinite(before) and after < IMPROVEMENT * before, (before, after)

    # the file: musubi names, LoKr tensors, family metadata
    with safe_open(path, "pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    assert "lokr_factor" in keys and meta["ss_base_model_version"] == FAMILY_META[case.family][0]
    modules = {k.split(".")[0] for k in keys if k != "lokr_factor"}
    assert all(m.startswith("lora_unet_") and f"{m}.lokr_w1" in keys and f"{m}.alpha" in keys for m in modules)
    _assert_musubi_names(case, model, {m[len("lora_unet_") :] for m in modules})

    # round trip through HadaKron's loader: all matched, same weights, same fitted loss
    loaded, _, report = apply_adapter(model, None, ApplyRequest(path))
    assert {m for m, _, _ in report.matched} == modules, report.summary_line()
    assert report.unmatched == [] and report.shape_mismatched == [], report.summary_line()
    trained_keys = [k if isinstance(k, str) else k[0] for k in model_out.patches]
    assert set(trained_keys) == {k if isinstance(k, str) else k[0] for k in loaded.patches}
    for key in trained_keys:
        torch.testing.assert_close(patched(loaded, key), patched(model_out, key), rtol=1e-5, atol=1e-6)
    assert fixed_loss(loaded, item) == pytest.approx(after, rel=1e-4, abs=1e-6)
    assert fixed_loss(model, item) == before  # the shared model is left as it was

    if case.control:
        _assert_control_reaches_the_model(comfy, case, model, item, recorder.seen, name)


def _assert_control_reaches_the_model(comfy, case: Case, model, item, seen: list, name: str) -> None:
    """Every training forward got the item's control latent as ComfyUI ``ref_latents`` (model space), and
    the same seed without control latents gives another loss."""
    base = model.model
    want = base.process_latent_in(item.control_latents[0].unsqueeze(0).float())
    assert len(seen) == STEPS and all(refs is not None and len(refs) == 1 for refs in seen)
    for refs in seen:
        torch.testing.assert_close(refs[0], want)
    plain = _item(case, control=False)
    assert torch.equal(plain.latent, item.latent)
    with_control = _train(comfy, model, item, f"fam/{name}_c1", steps=1)[2]["loss"]
    without = _train(comfy, model, plain, f"fam/{name}_c0", steps=1)[2]["loss"]
    assert with_control[0] != pytest.approx(without[0], rel=1e-4), (with_control, without)


@pytest.mark.parametrize(
    ("family", "want"), [("flux1", (1, 16, 8, 8)), ("qwen_image", (1, 16, 1, 8, 8))], ids=["kontext", "qwen_edit"]
)
def test_control_latents_take_the_model_layout(comfy, family, want):
    """A control latent in the dataset's layout (image or one-frame video latent, no batch dim) becomes one
    reference latent in the model's own layout, as the item's latent does (an image latent for Qwen-Image
    gets its frame axis); one already batched in the model's layout is kept."""
    from hadakron.nodes.train_model import ComfyModelAccess

    access = ComfyModelAccess(build_tiny(family))
    values = torch.randn(16, 8, 8)
    for given in (values, values.unsqueeze(1), values.view(want)):
        ref = access.reference_latent(given)
        assert ref.shape == want and torch.equal(ref.flatten(), values.flatten()), tuple(given.shape)


def test_bf16_weights_train_fp32_adapters(comfy, monkeypatch):
    """bf16 model weights and compute (training_dtype bf16); adapter parameters and their gradients fp32."""
    from comfy.model_patcher import ModelPatcher
    from comfy.supported_models import WAN21_T2V

    _, cfg = tiny_models.tiny_config("wan21")
    config = WAN21_T2V(cfg)
    config.set_inference_dtype(torch.bfloat16, None)
    base = config.get_model({})
    tiny_models.fill_deterministic(base.diffusion_model, 3)
    cpu = torch.device("cpu")
    model = ModelPatcher(base, load_device=cpu, offload_device=cpu)
    assert base.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16

    node = comfy.node_class("HadaKronTrainAdapter")
    train_run = sys.modules[node.__module__.rsplit(".", 1)[0] + ".train_run"]  # the pack as ComfyUI loaded it
    sessions, grad_dtypes, input_dtypes = [], set(), set()

    class Recording(train_run.TrainingSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)
            for p in self.network.parameters():
                p.register_hook(lambda g: grad_dtypes.add(g.dtype))

    monkeypatch.setattr(train_run, "TrainingSession", Recording)
    hook = base.diffusion_model.blocks[0].self_attn.q.register_forward_pre_hook(
        lambda m, args: input_dtypes.add(args[0].dtype)
    )
    try:
        item = _item(CASES["wan21"])
        result = _train(comfy, model, item, "fam/wan21_bf16", steps=4, training_dtype="bf16")
    finally:
        hook.remove()
    losses = result[2]["loss"]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    (session,) = sessions
    params = list(session.network.parameters())
    assert params and {p.dtype for p in params} == {torch.float32}
    assert grad_dtypes == {torch.float32} and input_dtypes == {torch.bfloat16}
    assert base.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16  # weights never upcast
    with safe_open(result[4], "pt") as handle:
        assert handle.metadata()["ss_mixed_precision"] == "bf16"
        assert {handle.get_tensor(k).dtype for k in handle.keys() if k != "lokr_factor"} == {torch.float32}


class _FramePackLike(torch.nn.Module):
    """FramePack's diffusers-named HunyuanVideo blocks (what a third-party wrapper's model exposes)."""

    def __init__(self, **config):
        super().__init__()
        self.dtype = config.get("dtype") or torch.float32  # ComfyUI reads the network's dtype attribute
        block = torch.nn.Module()
        block.attn = torch.nn.Module()
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            setattr(block.attn, name, torch.nn.Linear(8, 8))
        single = torch.nn.Module()
        single.attn = torch.nn.Module()
        single.attn.to_q = torch.nn.Linear(8, 8)
        single.proj_out = torch.nn.Linear(8, 8)
        self.transformer_blocks = torch.nn.ModuleList([block])
        self.single_transformer_blocks = torch.nn.ModuleList([single])


def test_framepack_is_refused_naming_the_family(comfy):
    from comfy.model_base import BaseModel, ModelType
    from comfy.model_patcher import ModelPatcher
    from comfy.supported_models import HunyuanVideo

    from hadakron.nodes.model_info import model_family

    _, cfg = tiny_models.tiny_config("hunyuan_video")
    config = HunyuanVideo(tiny_models._drop_newer_keys(cfg))
    base = BaseModel(config, ModelType.FLOW, unet_model=_FramePackLike)
    cpu = torch.device("cpu")
    model = ModelPatcher(base, load_device=cpu, offload_device=cpu)
    assert model_family(base) == "framepack"
    with pytest.raises(Exception, match=r"training is not supported for model family framepack") as info:
        _train(comfy, model, _item(CASES["hunyuan_video"]), "fam/framepack", steps=1)
    assert type(info.value).__name__ == "HadaKronNodeError" and "\n" not in str(info.value)
