"""ComfyUI glue for training: load the frozen model, reach its velocity prediction through ComfyUI's
own ``apply_model`` (conditioning via ``extra_conds``), progress/interrupts/live events, and the
trained MODEL output.

Velocity convention: a ``DIFFUSION_MODEL`` wrapper captures the raw network output, which for
ComfyUI's flow models (``CONST`` sampling) is ``v̂ ≈ ε − x0`` — Z-Image/Lumina2 apply their own time
reversal and sign inside ``_forward``, so no reversal is added here. If a model does not call the
wrapper, ``v̂ = (x_t − x̂0)/σ`` from ``calculate_denoised`` is used instead.
"""

from __future__ import annotations

import contextlib
import logging
import time

import comfy.model_management
import comfy.patcher_extension as pe
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..keymap import Target
from ..loading import PlannedPatch
from .patches import add_weight_patches

LOG = logging.getLogger("hadakron")
WRAPPER_KEY = "hadakron_train_capture"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_HISTORY: dict[str, list[dict]] = {}
HISTORY_LIMIT = 100_000


def clone_tree(obj):
    """Copy of nested lists/tuples/dicts with every tensor cloned (inference tensors -> normal ones)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tree(v) for v in obj)
    return obj


@contextlib.contextmanager
def training_patcher(model, training_dtype: str = "default"):
    """A loaded clone of ``model`` ready for backward: frozen, no inference-mode weights.

    Weights created under ``torch.inference_mode`` cannot be saved for backward, so such
    parameters/buffers are replaced by normal copies (same values). ``requires_grad`` flags of the
    shared module are restored on exit.
    """
    patcher = model.clone()
    if training_dtype in _DTYPES:
        patcher.set_model_compute_dtype(_DTYPES[training_dtype])
    comfy.model_management.load_models_gpu([patcher], memory_required=0, force_full_load=True)
    root = patcher.model.diffusion_model
    flags = {name: p.requires_grad for name, p in root.named_parameters()}
    with torch.inference_mode(False):
        _replace_inference_tensors(root)
        root.requires_grad_(False)
    try:
        yield patcher
    finally:
        for name, p in root.named_parameters():
            p.requires_grad_(flags.get(name, False))


def _replace_inference_tensors(root: torch.nn.Module) -> int:
    count = 0
    for module in root.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                if tensor is not None and tensor.is_inference():
                    copy = tensor.detach().clone()
                    store[name] = torch.nn.Parameter(copy, requires_grad=False) if store is module._parameters else copy
                    count += 1
    return count


class ComfyModelAccess:
    """``prepare``/``predict`` for the training loop, on one model or a WAN 2.2 low/high pair."""

    def __init__(self, patcher, high_patcher=None, boundary: float = 0.875):
        self.patcher, self.high = patcher, high_patcher
        self.boundary = float(boundary)
        self.base = patcher.model
        self.device = comfy.model_management.get_torch_device()
        dims = getattr(self.base.latent_format, "latent_dimensions", 2)
        self.latent_ndim = int(dims) + 1

    def model_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """A dataset latent (no batch dim) in the layout this model samples (image latents get a frame axis)."""
        if latent.dim() == self.latent_ndim - 1 and self.latent_ndim == 4:
            return latent.unsqueeze(1)  # image latent for a video model: one frame
        if latent.dim() == self.latent_ndim + 1 and latent.shape[1] == 1:
            return latent.squeeze(1)
        return latent

    def reference_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """A control latent (dataset layout, like ``TrainingItem.latent``) as a batch-of-one reference latent
        in this model's layout (Kontext / Qwen-Image-Edit ``reference_latents``; raw VAE space, the model's
        ``extra_conds`` normalises it). Already batched latents are kept as they are."""
        latent = self.model_latent(latent.float())
        return latent if latent.dim() == self.latent_ndim + 1 else latent.unsqueeze(0)

    def prepare(self, batch):
        """Stack the batch's latents (model space via ``process_latent_in``) and encode its conds."""
        latents = torch.stack([self.model_latent(item.latent).float() for item in batch.items]).to(self.device)
        x0 = self.base.process_latent_in(latents).float()
        kwargs = self._conditioning(batch, x0)
        return x0, kwargs

    def _conditioning(self, batch, x0: torch.Tensor) -> dict:
        per_item = []
        for index, (item, cond) in enumerate(zip(batch.items, batch.conditionings, strict=True)):
            controls = [self.reference_latent(lat) for lat in getattr(item, "control_latents", None) or []]
            cond = _with_control(cond, controls)
            converted = comfy.sampler_helpers.convert_cond(cond)
            sample = x0[index : index + 1]
            encoded = comfy.samplers.encode_model_conds(
                self.base.extra_conds, converted, sample, self.device, "positive", latent_image=sample
            )
            first = encoded[0]["model_conds"]
            per_item.append({k: v.process_cond(batch_size=1, area=None) for k, v in first.items()})
        return clone_tree(comfy.samplers.cond_cat(per_item))

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Velocity prediction ``v̂`` (ComfyUI convention, ``≈ ε − x0``)."""
        if self.high is None:
            return self._forward(self.patcher, x_t, t, kwargs)
        high = t >= self.boundary
        if bool(high.all()) or not bool(high.any()):
            return self._forward(self.high if bool(high.all()) else self.patcher, x_t, t, kwargs)
        outs = [
            self._forward(self.high if bool(h) else self.patcher, x_t[i : i + 1], t[i : i + 1], _slice(kwargs, i))
            for i, h in enumerate(high)
        ]
        return torch.cat(outs)

    def _forward(self, patcher, x_t, t, kwargs) -> torch.Tensor:
        captured = {}

        def capture(executor, *args, **kw):
            out = executor(*args, **kw)
            captured["out"] = out
            return out

        options = pe.copy_nested_dicts(patcher.model_options.get("transformer_options", {}))
        pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, capture, options)
        denoised = patcher.model.apply_model(x_t, t, transformer_options=options, **kwargs)
        out = captured.get("out")
        if torch.is_tensor(out) and out.shape == x_t.shape:
            return out
        sigma = t.clamp_min(1e-4).view(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - denoised) / sigma


def _slice(kwargs: dict, index: int) -> dict:
    return {k: (v[index : index + 1] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in kwargs.items()}


def _with_control(cond, control_latents):
    if not control_latents:
        return cond
    refs = list(control_latents)
    return [[c[0], {**c[1], "reference_latents": list(c[1].get("reference_latents", [])) + refs}] for c in cond]


@contextlib.contextmanager
def comfy_training_mode(value: bool = True):
    """Set ComfyUI's ``model_management.in_training`` flag to ``value`` (restored after), where it exists (0.33+).

    With it, newer ComfyUI uses differentiable ops (e.g. its RoPE) instead of fused inference kernels
    that have no autograd formula; 0.3.75 has no such flag and needs none. Preview sampling during
    training turns it off again.
    """
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    previous, mm.in_training = mm.in_training, value
    try:
        yield
    finally:
        mm.in_training = previous


def is_interrupt(exc: BaseException) -> bool:
    """ComfyUI's interrupt, matched by name (an Exception in 0.3.75, a BaseException in 0.33)."""
    return type(exc).__name__ == "InterruptProcessingException"


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt if the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class ProgressReporter:
    """ProgressBar + ``hadakron.train_progress`` events + the per-node history."""

    def __init__(self, node_id: str | None, total: int, start: int = 0):
        import comfy.utils

        self.node_id = str(node_id) if node_id is not None else "0"
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.bar.update_absolute(start, total)
        if start == 0:
            _HISTORY[self.node_id] = []
        _HISTORY.setdefault(self.node_id, [])

    def __call__(self, info) -> None:
        event = {"node": self.node_id, "step": info.step, "total": info.total, "loss": info.loss}
        event.update({"lr": info.lr, "eta_s": round(info.eta_s, 1), "time": time.time()})
        history = _HISTORY.setdefault(self.node_id, [])
        history.append(event)
        del history[:-HISTORY_LIMIT]
        self.bar.update_absolute(info.step, info.total)
        _send("hadakron.train_progress", event)


def _send(event: str, payload: dict) -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        with contextlib.suppress(Exception):
            instance.send_sync(event, payload)


def training_history(node_id) -> list[dict]:
    """Loss events of the latest run of ``node_id`` (for the web route)."""
    return list(_HISTORY.get(str(node_id), []))


def trained_model(model, network) -> object:
    """A clone of ``model`` with the trained adapters as lazy HadaKron weight patches."""
    planned = [
        PlannedPatch(Target(key=spec.weight_key, offset=spec.offset, module=spec.path), adapter, scale)
        for spec, adapter, scale in network.module_adapters()
    ]
    out = model.clone()
    add_weight_patches(out, planned, 1.0)
    return out


def block_paths(root: torch.nn.Module, patterns) -> list[str]:
    """Module paths fully matching any block pattern (gradient checkpointing units)."""
    import re

    compiled = [re.compile(p) for p in patterns]
    return [name for name, _ in root.named_modules() if name and any(c.fullmatch(name) for c in compiled)]
