"""The dataset contract between ``HadaKronDatasetFromFolder`` and ``HadaKronTrainAdapter``.

Latents and conditioning are already encoded (by ComfyUI's VAE/CLIP in the node layer), so the
trainer only sees tensors. ``conditioning`` uses ComfyUI's CONDITIONING layout,
``[[cond_tensor (1, L, D), {"pooled_output": …, …}]]``, so the trainer can hand it to the model's
own ``extra_conds`` machinery unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class TrainingItem:
    """One training sample (an image, or one clip of a video).

    Attributes:
        latent: VAE latent without batch dim: ``(C, H, W)`` for images, ``(C, F, H, W)`` for videos.
            Exactly what the VAE returns minus the batch dim, so an image through a video VAE
            (WAN, Qwen-Image, HunyuanVideo) is ``(C, 1, H, W)``. Raw VAE space (not
            ``process_latent_in``-normalised), fp32 on CPU.
        conditioning: ComfyUI CONDITIONING for the caption (``None`` until encoded).
        caption: the caption text (after defaults/trigger word were applied).
        source: the file it came from (relative to the dataset root) and, for clips, the frame range.
        repeats: how often the item appears per epoch (kohya ``N_name`` folders × num_repeats).
        control_latents: encoded control images for edit families (Kontext, Qwen-Image-Edit).
        frames: pixel frames of the clip (1 for images).
        frame_start: first frame of the clip in the (fps-adjusted) video.
        pixel_size: ``(width, height)`` of the bucket the pixels were resized/cropped to.
        media: ``"image"`` or ``"video"`` (``""`` when unknown, e.g. native latent lists).
    """

    latent: torch.Tensor
    conditioning: list | None
    caption: str = ""
    source: str = ""
    repeats: int = 1
    control_latents: list[torch.Tensor] = field(default_factory=list)
    frames: int = 1
    frame_start: int = 0
    pixel_size: tuple[int, int] | None = None
    media: str = ""

    @property
    def bucket(self) -> tuple[int, ...]:
        """Items batch together only when their latent shapes (the bucket) agree."""
        return tuple(self.latent.shape)


@dataclass
class AdapterDataset:
    """What ``HadaKronDatasetFromFolder`` outputs (custom type ``HADAKRON_DATASET``).

    Attributes:
        items: the samples, each listed once (use ``repeats`` for weighting).
        empty_conditioning: the encoding of an empty caption (caption dropout), if a CLIP was given.
        encode_caption: callback that encodes a caption variant at training time (tag shuffle);
            ``None`` when no CLIP was given.
        skipped: ``(file, reason)`` for every file that could not be used.
        cache_stats: e.g. ``{"encoded": 3, "cached": 10}`` (source files); ``text_encoded`` /
            ``text_cached`` count captions, ``musubi`` files taken from a musubi cache.
        notes: ``(file, message)`` for files used with a caveat (caption encoding, short videos …).
    """

    items: list[TrainingItem]
    empty_conditioning: list | None = None
    encode_caption: Callable[[str], list] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cache_stats: dict[str, int] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def buckets(self) -> Counter:
        """How many items (with repeats) fall into each latent-shape bucket."""
        counts: Counter = Counter()
        for item in self.items:
            counts[item.bucket] += item.repeats
        return counts

    def summary(self) -> str:
        """Human-readable summary shown on the dataset node."""
        lines = [f"{len(self.items)} items, {sum(i.repeats for i in self.items)} per epoch with repeats"]
        lines += [f"  bucket {'x'.join(map(str, b))}: {n}" for b, n in sorted(self.buckets().items())]
        videos = [i for i in self.items if i.media == "video"]
        if videos:
            counts = Counter(i.frames for i in videos)
            frames = ", ".join(f"{f} frames: {n}" for f, n in sorted(counts.items()))
            lines.append(f"  video clips {len(videos)} ({frames}), images {len(self.items) - len(videos)}")
        if self.cache_stats:
            lines.append("  cache: " + ", ".join(f"{k} {v}" for k, v in sorted(self.cache_stats.items())))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines += [f"    {path}: {reason}" for path, reason in self.skipped]
        if self.notes:
            lines.append(f"  notes {len(self.notes)}:")
            lines += [f"    {path}: {message}" for path, message in self.notes]
        return "\n".join(lines)


def from_native_lists(latents: list[dict], conditionings: list[list]) -> AdapterDataset:
    """Build a dataset from ComfyUI's native LATENT list and CONDITIONING list (core dataset nodes).

    Each LATENT dict holds ``samples`` ``(B, C, …)``; a batch becomes B items. One conditioning
    per latent batch, or a single conditioning shared by all.
    """
    items = []
    for index, latent in enumerate(latents):
        cond = conditionings[index] if len(conditionings) > 1 else conditionings[0]
        for sample in latent["samples"]:
            items.append(TrainingItem(latent=sample.clone(), conditioning=cond, source=f"latent[{index}]"))
    return AdapterDataset(items=items)
