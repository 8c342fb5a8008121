"""The training loop: flow-matching velocity objective, accumulation, clipping, schedules, state.

The model is reached only through two callables the caller provides (the ComfyUI glue in
``nodes/``): ``prepare(batch) -> (x0, context)`` turns a batch into model-space latents, and
``predict(x_t, t, context) -> v̂`` runs the frozen model with the adapters attached. Objective
(musubi, training.md §1): ``x_t = (1 − t)·x0 + t·ε``, target ``ε − x0``, MSE in fp32 with the optional
cosmap/sigma_sqrt weight. Noise and timesteps come from one seeded CPU generator.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .batches import Batch, BatchStream
from .network import AdapterNetwork
from .optim import build_optimizer, build_scheduler
from .timesteps import loss_weight, sample_t

STATE_FORMAT = "hadakron-train-state-1"


@dataclass
class StepInfo:
    """What is reported after each optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float


@dataclass
class ModelAccess:
    """How the loop reaches the model: batch -> (x0, context); (x_t, t, context) -> velocity."""

    prepare: Callable[[Batch], tuple[torch.Tensor, object]]
    predict: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
    roots: list[torch.nn.Module] = field(default_factory=list)
    checkpoint_blocks: list[str] | None = None
    clone_inputs: list[str] = field(default_factory=list)


def total_steps(config, batches_per_epoch: int) -> int:
    """Optimizer steps for the run: ``steps``, or ``epochs`` worth of batches / accumulation."""
    if config.epochs > 0:
        return max(1, math.ceil(config.epochs * batches_per_epoch / config.grad_accum))
    return int(config.steps)


class Trainer:
    """One run: owns the optimizer, schedule, generator, data stream and step counter."""

    def __init__(self, network: AdapterNetwork, config, stream: BatchStream, access: ModelAccess):
        self.network, self.config, self.stream, self.access = network, config, stream, access
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.total = total_steps(config, stream.batches_per_epoch())
        self.optimizer = build_optimizer(network.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total)
        self.step = 0
        self.losses: list[float] = []
        self._elapsed = 0.0

    def micro_loss(self, batch: Batch) -> torch.Tensor:
        """Loss of one micro-batch (not yet divided by the accumulation count)."""
        x0, context = self.access.prepare(batch)
        x0 = x0.float()
        t = sample_t(self.config, x0.shape[0], self.generator, tuple(x0.shape))
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32).to(x0.device)
        tt = t.to(x0.device).view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1.0 - tt) * x0 + tt * noise
        pred = self.access.predict(x_t, t.to(x0.device), context)
        err = (pred.float() - (noise - x0)) ** 2
        per_sample = err.mean(dim=tuple(range(1, err.dim())))
        weight = loss_weight(self.config, t)
        if weight is not None:
            per_sample = per_sample * weight.to(per_sample.device)
        return per_sample.mean()

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        accum = self.config.grad_accum
        total = 0.0
        for _ in range(accum):
            self.network.new_micro_step()
            loss = self.micro_loss(self.stream.next())
            (loss / accum).backward()
            total += float(loss.detach())
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / accum

    def run(self, on_step=None, check_interrupt=None, on_checkpoint=None) -> list[float]:
        """Train until ``total`` steps; callbacks get :class:`StepInfo` / the step number.

        ``check_interrupt()`` is called before every step and may raise; the state then is exactly
        the one after the last completed step (what a final checkpoint should hold).
        """
        every = int(self.config.save_every_n_steps)
        with torch.inference_mode(False), torch.enable_grad(), self._attached():
            self.network.train()
            while self.step < self.total:
                if check_interrupt is not None:
                    check_interrupt()
                started = time.perf_counter()
                loss = self.train_step()
                self._elapsed += time.perf_counter() - started
                self.losses.append(loss)
                if on_step is not None:
                    on_step(self._info(loss))
                if on_checkpoint is not None and every > 0 and self.step % every == 0 and self.step < self.total:
                    on_checkpoint(self.step)
            self.network.eval()
        return self.losses

    def _attached(self):
        stack = contextlib.ExitStack()
        for root in self.access.roots:
            stack.enter_context(self.network.attached(root, self.access.checkpoint_blocks, self.access.clone_inputs))
        return stack

    def _info(self, loss: float) -> StepInfo:
        done = max(1, len(self.losses))
        eta = self._elapsed / done * (self.total - self.step)
        lr = float(self.optimizer.param_groups[0]["lr"])
        return StepInfo(self.step, self.total, loss, lr, self._elapsed, eta)

    # --- resumable state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs (tensors, numbers, lists and dicts only)."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "total": self.total,
            "losses": list(self.losses),
            "network": self.network.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "dropout_generator": self.network.dropout_generator.get_state(),
            "data": self.stream.state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the network's tensors included)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a HadaKron training state ({state.get('format')!r})")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.network.dropout_generator.set_state(state["dropout_generator"])
        self.stream.load_state(state["data"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]
