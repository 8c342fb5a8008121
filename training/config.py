"""Training settings: one dataclass (help strings feed node tooltips), musubi ``network_args`` parsing
and per-family defaults (training.md §2.2, §3; formats.md §16).

Defaults chosen here (documented in the node's tooltips):

* ``network_dim`` **16** (musubi's default is 4, its docs use 32). At 16 a LoKr at factor −1 stays
  low-rank on every 2048–5120-wide square layer (full-matrix needs r ≥ max(out_k, in_n)/2 = 32…40),
  avoiding the full-matrix mode that is reported to blow up at LoRA learning rates; it is also
  Qwen-Image's recommended dim.
* ``network_alpha`` 1, ``factor`` −1, 100 steps, lr 1e-4, AdamW (weight decay 0.01, torch's
  default), constant schedule, ``max_grad_norm`` 1.0, the family's recommended timestep sampling.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import asdict, dataclass, field, fields

from ..common.errors import ConventionError

LOG = logging.getLogger("hadakron")

ALGOS = ("lokr", "loha", "lora")
TIMESTEP_MODES = ("family", "sigma", "uniform", "sigmoid", "shift", "flux_shift", "flux2_shift", "qwen_shift", "logsnr")
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "cosmap", "sigma_sqrt")
SCHEDULERS = ("constant", "linear", "cosine")
KEY_FORMATS = ("musubi", "comfy")
TRAINING_DTYPES = ("default", "bf16", "fp16", "fp32")
SAVE_PRECISIONS = ("fp32", "bf16", "fp16")

# family -> (timestep_sampling, discrete_flow_shift) recommended by musubi's docs (training.md §2.2).
FAMILY_TIMESTEPS = {
    "hunyuan_video": ("shift", 7.0),
    "wan": ("shift", 3.0),
    "flux": ("flux_shift", 1.0),
    "flux2": ("flux2_shift", 1.0),
    "qwen_image": ("shift", 2.2),
    "z_image": ("shift", 2.0),
    "hunyuan_video_1_5": ("shift", 2.0),
    "kandinsky5": ("shift", 5.0),
}


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


def _fl(factory, help_text: str):
    return field(default_factory=factory, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Everything one training run needs besides the model and the data."""

    algo: str = _f("lokr", "Adapter algorithm: lokr (Kronecker), loha (Hadamard) or lora.")
    network_dim: int = _f(16, "Rank (musubi --network_dim). 16 keeps LoKr low-rank on 2048-5120 wide layers.")
    network_alpha: float = _f(1.0, "Alpha (musubi --network_alpha); the scale is alpha/rank (full-matrix LoKr: 1).")
    factor: int = _f(-1, "LoKr factor; -1 = the divisor pair closest to sqrt(dim) (LyCORIS).")
    decompose_both: bool = _f(False, "LoKr: also factor w1 into a low-rank product.")
    full_matrix: bool = _f(False, "LoKr: keep w2 a full matrix whatever the rank.")
    conv_dim: int = _f(0, "Rank for conv layers (with train_conv); 0 = network_dim.")
    conv_alpha: float = _f(0.0, "Alpha for conv layers; 0 = network_alpha.")
    train_conv: bool = _f(False, "Also train conv layers in the target blocks (skipped with a warning otherwise).")
    dropout: float = _f(0.0, "Neuron dropout on the LoRA hidden (LoRA only, as in musubi).")
    rank_dropout: float = _f(0.0, "Rank dropout (LoRA: rank mask; LoHa/LoKr: output-row mask of the delta).")
    module_dropout: float = _f(0.0, "Probability of skipping a module's delta for one step.")
    target_preset: str = _f("musubi", "musubi: the family's target blocks and excludes; all_linear: every Linear.")
    include: str = _f("", "Regex (search) on ComfyUI module paths: rescues excluded or adds modules.")
    exclude: str = _f("", "Regex (search) on ComfyUI module paths: modules to skip.")
    include_patterns: list = _fl(list, "musubi include_patterns (fullmatch).")
    exclude_patterns: list = _fl(list, "musubi exclude_patterns (fullmatch), added to defaults.")
    steps: int = _f(100, "Optimizer steps (musubi --max_train_steps).")
    epochs: int = _f(0, "If > 0, train this many epochs instead of `steps`.")
    batch_size: int = _f(1, "Samples per micro-batch (same latent shape only).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(1e-4, "Learning rate.")
    optimizer: str = _f("AdamW", "Optimizer (torch.optim class name; AdamW8bit needs bitsandbytes).")
    optimizer_args: str = _f("", "Extra optimizer arguments, e.g. 'betas=(0.9,0.99) eps=1e-6'.")
    lr_scheduler: str = _f("constant", "constant, linear or cosine (each with warmup).")
    lr_warmup_steps: float = _f(0.0, "Warmup steps (>= 1) or a fraction of the run (< 1).")
    weight_decay: float = _f(0.01, "Weight decay (torch AdamW default 0.01).")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm of the adapter (0 disables).")
    timestep_sampling: str = _f("family", "How t is drawn (training.md §2); family = its recommended mode.")
    discrete_flow_shift: float = _f(0.0, "Shift S for `shift` sampling; 0 = the family's recommended shift.")
    sigmoid_scale: float = _f(1.0, "Scale s in sigmoid(s*N).")
    weighting_scheme: str = _f("none", "sigma-mode sampling density, or cosmap/sigma_sqrt loss weights.")
    logit_mean: float = _f(0.0, "Mean for logit_normal / logsnr.")
    logit_std: float = _f(1.0, "Std for logit_normal / logsnr.")
    mode_scale: float = _f(1.29, "Scale for the `mode` weighting scheme.")
    min_timestep: float = _f(0.0, "Lower timestep bound (0-1000).")
    max_timestep: float = _f(1000.0, "Upper timestep bound (0-1000).")
    preserve_distribution_shape: bool = _f(False, "Rejection-sample into [min, max] instead of squeezing.")
    timestep_boundary: float = _f(0.875, "WAN 2.2 A14B: t >= boundary uses the high-noise model (0-1).")
    caption_dropout: float = _f(0.0, "Probability of training a sample on the empty caption.")
    shuffle_tags: bool = _f(False, "Shuffle comma-separated caption tags (needs the dataset's text encoder).")
    keep_tokens: int = _f(0, "Leading tags kept in place when shuffling.")
    seed: int = _f(0, "Seed for init, noise, timesteps, dropout and data order.")
    training_dtype: str = _f("default", "Compute dtype of the frozen model (default: the model's own).")
    gradient_checkpointing: bool = _f(False, "Recompute each block in backward to save memory.")
    save_every_n_steps: int = _f(0, "Write a checkpoint every N steps (0: only the final file).")
    keep_last_n: int = _f(0, "Keep only the newest N step checkpoints (0 keeps all).")
    output_name: str = _f("hadakron_lokr", "File name (sub-folders allowed) in ComfyUI's loras folder.")
    key_format: str = _f("musubi", "musubi: lora_unet_ keys + alpha; comfy: diffusion_model.<module> keys.")
    save_precision: str = _f("fp32", "dtype of saved tensors (lokr_factor stays int64).")
    overwrite: bool = _f(False, "Replace existing files of the same name.")
    family: str = _f("", "Model family (set from the model).")
    network_args: str = _f("", "musubi-style key=value pairs, e.g. 'factor=4 conv_dim=8'.")
    extra_network_args: dict = _fl(dict, "Unrecognised network_args (kept verbatim).")
    explicit_factor: bool = _f(False, "True when the factor was given (not defaulted).")

    def to_dict(self) -> dict:
        """Plain dict (JSON-able) for the sidecar state."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def resolved_timesteps(self) -> tuple[str, float]:
        """``(mode, shift)`` after replacing ``family`` / 0 by the family's recommendation."""
        mode, shift = FAMILY_TIMESTEPS.get(self.family, ("shift", 3.0))
        chosen = mode if self.timestep_sampling == "family" else self.timestep_sampling
        return chosen, (self.discrete_flow_shift if self.discrete_flow_shift > 0 else shift)

    def validate(self) -> None:
        """Raise :class:`ConventionError` for contradictory or out-of-range settings."""
        _choice("algo", self.algo, ALGOS)
        _choice("timestep_sampling", self.timestep_sampling, TIMESTEP_MODES)
        _choice("weighting_scheme", self.weighting_scheme, WEIGHTING_SCHEMES)
        _choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _choice("key_format", self.key_format, KEY_FORMATS)
        _choice("training_dtype", self.training_dtype, TRAINING_DTYPES)
        _choice("save_precision", self.save_precision, SAVE_PRECISIONS)
        _choice("target_preset", self.target_preset, ("musubi", "all_linear"))
        if self.network_dim < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConventionError("network_dim, batch_size and grad_accum must be at least 1")
        for name in ("dropout", "rank_dropout", "module_dropout", "caption_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConventionError(f"{name} must be in [0, 1)")
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise ConventionError("need 0 <= min_timestep < max_timestep <= 1000")
        if self.steps < 1 and self.epochs < 1:
            raise ConventionError("train at least one step (steps or epochs)")


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        raise ConventionError(f"{name} must be one of {', '.join(options)} (got {value!r})")


# network_args keys -> (config field, converter)
_NETWORK_ARG_FIELDS = {
    "factor": ("factor", int),
    "decompose_both": ("decompose_both", lambda v: str(v).lower() in ("1", "true", "yes")),
    "full_matrix": ("full_matrix", lambda v: str(v).lower() in ("1", "true", "yes")),
    "conv_dim": ("conv_dim", int),
    "conv_alpha": ("conv_alpha", float),
    "rank_dropout": ("rank_dropout", float),
    "module_dropout": ("module_dropout", float),
    "dropout": ("dropout", float),
    "train_conv": ("train_conv", lambda v: str(v).lower() in ("1", "true", "yes")),
    "include_patterns": ("include_patterns", lambda v: list(ast.literal_eval(v))),
    "exclude_patterns": ("exclude_patterns", lambda v: list(ast.literal_eval(v))),
}


def parse_network_args(text: str) -> dict[str, str]:
    """Split musubi ``--network_args`` syntax (``key=value`` pairs, quotes allowed) into raw strings.

    >>> parse_network_args("factor=4 conv_dim=8")
    {'factor': '4', 'conv_dim': '8'}
    """
    pairs: dict[str, str] = {}
    for token in _tokens(text or ""):
        if "=" not in token:
            raise ConventionError(f"network_args item {token!r} is not key=value")
        key, value = token.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs[key.strip()] = value
    return pairs


def _tokens(text: str) -> list[str]:
    """Split on whitespace outside quotes and brackets (list literals may contain spaces)."""
    tokens, current, quote, depth = [], "", "", 0
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char.isspace() and depth == 0:
            tokens, current = (tokens + [current] if current else tokens), ""
            continue
        current += char
    if quote or depth:
        raise ConventionError(f"network_args: unbalanced quotes or brackets in {text!r}")
    return tokens + ([current] if current else [])


def apply_network_args(config: TrainConfig) -> TrainConfig:
    """Fold ``config.network_args`` into the typed fields (network_args win, as an explicit choice)."""
    for key, raw in parse_network_args(config.network_args).items():
        if key not in _NETWORK_ARG_FIELDS:
            LOG.warning("HadaKron train: network_args %s=%s is not used by HadaKron (kept in metadata)", key, raw)
            config.extra_network_args[key] = raw
            continue
        name, convert = _NETWORK_ARG_FIELDS[key]
        try:
            setattr(config, name, convert(raw))
        except (ValueError, SyntaxError) as exc:
            raise ConventionError(f"network_args {key}={raw!r}: {exc}") from exc
        if key == "factor":
            config.explicit_factor = True
    return config


def ss_network_args(config: TrainConfig) -> dict[str, str]:
    """The ``ss_network_args`` JSON object (raw strings, musubi style), always with the LoKr factor."""
    args = dict(parse_network_args(config.network_args))
    if config.algo == "lokr":
        args["factor"] = str(config.factor)
        if config.decompose_both:
            args.setdefault("decompose_both", "True")
        if config.full_matrix:
            args.setdefault("full_matrix", "True")
    if config.train_conv:
        args.setdefault("conv_dim", str(config.conv_dim or config.network_dim))
        args.setdefault("conv_alpha", str(config.conv_alpha or config.network_alpha))
    for name in ("rank_dropout", "module_dropout"):
        if getattr(config, name) > 0:
            args.setdefault(name, str(getattr(config, name)))
    return args
