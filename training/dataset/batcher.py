"""Batched VAE encoding: clips of the same bucket are queued and encoded together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cache import CachedClip, CachedEntry
from .decode import DecodedEntry
from .encode import VaeEncoder
from .spec import MediaEntry


@dataclass
class _Pending:
    entry: MediaEntry
    key: str
    decoded: DecodedEntry
    latents: list
    remaining: int


class LatentBatcher:
    """Queues decoded clips per bucket, encodes a bucket when ``batch_size`` clips wait, and calls
    ``on_complete(entry, key, cached_entry)`` once every clip and control image of a file is encoded.
    """

    def __init__(
        self,
        encoder: VaeEncoder,
        batch_size: int,
        on_complete: Callable[[MediaEntry, str, CachedEntry], None],
    ):
        self.encoder = encoder
        self.batch_size = max(1, batch_size)
        self.on_complete = on_complete
        self.queues: dict[tuple, list[tuple[torch.Tensor, _Pending, int]]] = {}
        self.encoded_clips = 0

    def submit(self, entry: MediaEntry, key: str, decoded: DecodedEntry) -> None:
        """Queue all pixel tensors of one decoded file."""
        slots = [clip[3] for clip in decoded.clips] + list(decoded.controls)
        pending = _Pending(entry, key, decoded, [None] * len(slots), len(slots))
        if not slots:
            self._complete(pending)
            return
        for index, pixels in enumerate(slots):
            batch_key = self.encoder.batch_key(pixels)
            if batch_key is None:
                self._run([(pixels, pending, index)])
                continue
            queue = self.queues.setdefault(batch_key, [])
            queue.append((pixels, pending, index))
            if len(queue) >= self.batch_size:
                self._run(self.queues.pop(batch_key))

    def flush(self) -> None:
        """Encode every clip still waiting in a partly filled bucket."""
        for batch_key in list(self.queues):
            self._run(self.queues.pop(batch_key))

    def _run(self, batch: list[tuple[torch.Tensor, _Pending, int]]) -> None:
        latents = self.encoder.encode([pixels for pixels, _, _ in batch])
        self.encoded_clips += len(batch)
        for latent, (_, pending, index) in zip(latents, batch, strict=True):
            pending.latents[index] = latent.detach().to("cpu")
            pending.remaining -= 1
            if pending.remaining == 0:
                self._complete(pending)

    def _complete(self, pending: _Pending) -> None:
        clips_meta = pending.decoded.clips
        clips = [
            CachedClip(latent, start, frames, size)
            for latent, (start, frames, size, _) in zip(pending.latents, clips_meta, strict=False)
        ]
        controls = pending.latents[len(clips_meta) :]
        note = pending.decoded.note
        pending.decoded = None  # drop the pixels
        self.on_complete(pending.entry, pending.key, CachedEntry(clips, controls, note))
