"""Seeded data order: epochs of items (with repeats) shuffled per epoch and grouped into batches of
one latent shape (bucket), plus caption dropout and tag shuffle.

The order of epoch ``e`` depends only on ``(seed, e)``, so the state to resume is just
``(epoch, batch index)``; caption randomness has its own generator whose state is saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

LOG = logging.getLogger("hadakron")


@dataclass
class Batch:
    """Items of one micro-batch and the conditioning chosen for each (after caption ops)."""

    items: list
    conditionings: list


def epoch_batches(dataset, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
    """Item indices per batch for one epoch (repeats expanded, shuffled, grouped by bucket)."""
    order = [i for i, item in enumerate(dataset.items) for _ in range(max(1, int(getattr(item, "repeats", 1))))]
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
    order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
    queues: dict[tuple, list[int]] = {}
    batches: list[list[int]] = []
    for index in order:
        queue = queues.setdefault(tuple(dataset.items[index].latent.shape), [])
        queue.append(index)
        if len(queue) == batch_size:
            batches.append(list(queue))
            queue.clear()
    batches += [q for q in queues.values() if q]
    return batches


class BatchStream:
    """Endless batches over epochs; ``state()`` / ``load_state()`` make it resumable."""

    def __init__(self, dataset, config):
        if not dataset.items:
            raise ValueError("the dataset has no items")
        self.dataset = dataset
        self.config = config
        self.epoch, self.index = 0, 0
        self.caption_gen = torch.Generator().manual_seed(int(config.seed) + 2)
        self._batches = epoch_batches(dataset, config.seed, 0, config.batch_size)
        self._warned: set[str] = set()

    def batches_per_epoch(self) -> int:
        """Batches in the current epoch."""
        return len(self._batches)

    def next(self) -> Batch:
        """The next batch (advancing to a new, reshuffled epoch when one ends)."""
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = epoch_batches(self.dataset, self.config.seed, self.epoch, self.config.batch_size)
        indices = self._batches[self.index]
        self.index += 1
        items = [self.dataset.items[i] for i in indices]
        return Batch(items=items, conditionings=[self._conditioning(item) for item in items])

    def _conditioning(self, item):
        cfg = self.config
        if cfg.caption_dropout > 0 and float(torch.rand(1, generator=self.caption_gen)) < cfg.caption_dropout:
            empty = getattr(self.dataset, "empty_conditioning", None)
            if empty is not None:
                return empty
            self._warn_once("caption dropout needs the dataset's empty-caption encoding; skipped")
        encode = getattr(self.dataset, "encode_caption", None)
        if cfg.shuffle_tags and item.caption:
            if encode is None:
                self._warn_once("tag shuffle needs a dataset with a text encoder; skipped")
            else:
                return encode(shuffle_tags(item.caption, cfg.keep_tokens, self.caption_gen))
        return item.conditioning

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            LOG.warning("HadaKron train: %s", message)

    def state(self) -> dict:
        """Resumable position: epoch, batch index, caption generator state."""
        return {"epoch": self.epoch, "index": self.index, "caption_gen": self.caption_gen.get_state()}

    def load_state(self, state: dict) -> None:
        """Restore a :meth:`state`."""
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.caption_gen.set_state(state["caption_gen"])
        self._batches = epoch_batches(self.dataset, self.config.seed, self.epoch, self.config.batch_size)


def shuffle_tags(caption: str, keep_tokens: int, gen: torch.Generator) -> str:
    """Shuffle comma-separated tags, keeping the first ``keep_tokens`` in place (sd-scripts style)."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    tail = [tail[i] for i in torch.randperm(len(tail), generator=gen).tolist()]
    return ", ".join(head + tail)
