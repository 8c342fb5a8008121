"""Optimizers (torch.optim by name, AdamW8bit via bitsandbytes when installed) and LR schedules.

Schedules are ``LambdaLR`` with a picklable multiplier object, so a resumed run rebuilds the same
schedule from the config and restores only ``last_epoch``.
"""

from __future__ import annotations

import ast
import math
import shlex

import torch

from ..common.errors import ConventionError, OptionalDependencyError

OPTIMIZERS = ("AdamW", "Adafactor", "Adam", "SGD", "RMSprop", "Adagrad", "AdamW8bit")


def parse_optimizer_args(text: str) -> dict:
    """``"betas=(0.9,0.99) eps=1e-6"`` -> ``{"betas": (0.9, 0.99), "eps": 1e-06}`` (Python literals)."""
    out = {}
    for token in shlex.split(text or ""):
        if "=" not in token:
            raise ConventionError(f"optimizer_args item {token!r} is not key=value")
        key, value = token.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def _optimizer_class(name: str):
    if name == "AdamW8bit":
        try:
            import bitsandbytes
        except ImportError as exc:
            raise OptionalDependencyError("AdamW8bit needs the bitsandbytes package") from exc
        return bitsandbytes.optim.AdamW8bit
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConventionError(f"optimizer {name!r} is not available in this torch (choose one of {OPTIMIZERS})")
    return cls


def build_optimizer(params, config) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` with lr, weight decay and ``optimizer_args``."""
    cls = _optimizer_class(config.optimizer)
    kwargs = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    kwargs.update(parse_optimizer_args(config.optimizer_args))
    try:
        return cls(list(params), **kwargs)
    except TypeError as exc:
        raise ConventionError(f"optimizer {config.optimizer}: {exc}") from exc


class ScheduleMultiplier:
    """LR multiplier for ``constant``/``linear``/``cosine`` with linear warmup (picklable)."""

    def __init__(self, kind: str, total: int, warmup: int):
        self.kind, self.total, self.warmup = kind, max(1, int(total)), max(0, int(warmup))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(value: float, total: int) -> int:
    """Warmup as steps: values below 1 are a fraction of ``total`` (musubi)."""
    return int(round(value * total)) if 0 < value < 1 else int(value)


def build_scheduler(optimizer: torch.optim.Optimizer, config, total_steps: int):
    """``LambdaLR`` over optimizer steps."""
    multiplier = ScheduleMultiplier(config.lr_scheduler, total_steps, warmup_steps(config.lr_warmup_steps, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
