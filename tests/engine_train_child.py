"""Child process for the kill -9 / resume test: engine-level training (no ComfyUI) of a tiny WAN-named model.

``python engine_train_child.py <loras folder> <output name> [--resume FILE] [--pause-publishing NAME]``

Trains ``STEPS`` steps with a checkpoint every ``EVERY`` steps, single-threaded (bitwise reproducible
across processes), and prints one JSON line ``{"losses": [...], "final": path}`` at the end.
``--pause-publishing NAME`` stops the run for good right before the atomic writer renames its finished
temp file onto ``NAME`` (printing ``PAUSED``): the worst moment for a ``kill -9``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from hadakron.training.config import TrainConfig
from hadakron.training.data import AdapterDataset, TrainingItem
from hadakron.training.loop import ModelAccess
from hadakron.training.session import TrainingSession

STEPS, EVERY, DIM, CHANNELS = 8, 2, 16, 4


class Block(torch.nn.Module):
    """WAN names (``self_attn.q/k/v/o``, ``ffn.0/2``) so the musubi preset targets it."""

    def __init__(self):
        super().__init__()
        self.self_attn = torch.nn.Module()
        for name in "qkvo":
            setattr(self.self_attn, name, torch.nn.Linear(DIM, DIM))
        self.ffn = torch.nn.Sequential(torch.nn.Linear(DIM, 2 * DIM), torch.nn.GELU(), torch.nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        attn = self.self_attn
        weights = torch.softmax(attn.q(x) @ attn.k(x).transpose(-1, -2) / DIM**0.5, dim=-1)
        x = x + attn.o(weights @ attn.v(x))
        return x + self.ffn(x)


class TinyWan(torch.nn.Module):
    """Latent ``(B, C, F, H, W)`` -> tokens -> two blocks -> velocity of the same shape."""

    def __init__(self):
        super().__init__()
        self.patch_embedding = torch.nn.Linear(CHANNELS, DIM)
        self.time_embedding = torch.nn.Linear(1, DIM)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(DIM, CHANNELS)

    def forward(self, x_t, t, context):
        tokens = x_t.flatten(2).transpose(1, 2)
        h = self.patch_embedding(tokens) + self.time_embedding(t.view(-1, 1, 1)) + context.mean(1, keepdim=True)
        for block in self.blocks:
            h = block(h)
        return self.head(h).transpose(1, 2).reshape(x_t.shape)


def dataset() -> AdapterDataset:
    gen = torch.Generator().manual_seed(11)
    items = [
        TrainingItem(latent=torch.randn(CHANNELS, 1, 4, 4, generator=gen), conditioning=[[torch.randn(1, 3, DIM), {}]])
        for _ in range(3)
    ]
    return AdapterDataset(items=items)


def access(root: TinyWan) -> ModelAccess:
    def prepare(batch):
        x0 = torch.stack([item.latent for item in batch.items])
        return x0, torch.cat([cond[0][0] for cond in batch.conditionings])

    return ModelAccess(prepare=prepare, predict=root, roots=[root])


def pause_before_publishing(name: str) -> None:
    """Block forever when the atomic writer is about to rename its temp file onto ``name``."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            print("PAUSED", flush=True)
            time.sleep(3600)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("output_name")
    parser.add_argument("--resume", default="")
    parser.add_argument("--pause-publishing", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.pause_publishing:
        pause_before_publishing(args.pause_publishing)
    torch.manual_seed(0)
    root = TinyWan().requires_grad_(False)
    config = TrainConfig(
        algo="lokr",
        network_dim=4,
        steps=STEPS,
        save_every_n_steps=EVERY,
        learning_rate=1e-2,
        lr_scheduler="cosine",
        lr_warmup_steps=2,
        rank_dropout=0.1,
        seed=7,
        output_name=args.output_name,
    )
    session = TrainingSession(root, "wan", config, dataset(), access(root), args.folder)
    if args.resume:
        session.resume(args.resume)
    session.check_outputs()
    final = session.train(on_step=lambda info: print(f"step {info.step}", flush=True))
    print(json.dumps({"losses": session.trainer.losses, "final": str(final)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
