"""Which clips a video yields: musubi's ``frame_extraction`` modes (training.md §4.1)."""

from __future__ import annotations

import numpy as np

from .spec import DatasetSpec


def clip_positions(frame_count: int, spec: DatasetSpec, temporal_stride: int = 4) -> list[tuple[int, int]]:
    """``(start, frames)`` for every clip taken from a video of ``frame_count`` frames.

    Modes (for each target frame count F in ``spec.target_frames``): ``head`` the first F frames;
    ``chunk`` consecutive non-overlapping F-frame chunks; ``slide`` windows every ``frame_stride``
    frames; ``uniform`` ``frame_sample`` evenly spaced starts; ``full`` one clip of all frames up
    to ``max_frames``, rounded down to ``N·temporal_stride + 1``. Videos shorter than F yield no
    clip for that F.
    """
    mode = spec.frame_extraction
    if mode == "full":
        count = min(frame_count, spec.max_frames)
        count = (count - 1) // temporal_stride * temporal_stride + 1 if temporal_stride > 1 else count
        return [(0, count)] if count >= 1 else []
    positions: list[tuple[int, int]] = []
    for target in spec.target_frames:
        if frame_count < target:
            continue
        if mode == "head":
            positions.append((0, target))
        elif mode == "chunk":
            positions += [(i, target) for i in range(0, frame_count - target + 1, target)]
        elif mode == "slide":
            positions += [(i, target) for i in range(0, frame_count - target + 1, spec.frame_stride)]
        elif mode == "uniform":
            starts = np.linspace(0, frame_count - target, spec.frame_sample, dtype=int)
            positions += [(int(i), target) for i in starts]
    return positions


def frames_needed(spec: DatasetSpec) -> int | None:
    """How many frames decoding may stop after (``None``: the whole video is needed)."""
    if spec.frame_extraction == "head":
        return max(spec.target_frames)
    if spec.frame_extraction == "full":
        return spec.max_frames
    return None


def valid_frame_count(frames: int, temporal_stride: int) -> bool:
    """True if a clip of ``frames`` fits a VAE compressing time by ``temporal_stride`` (``N·s + 1``)."""
    return temporal_stride <= 1 or (frames - 1) % temporal_stride == 0
