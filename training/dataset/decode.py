"""Turning one source file into pixel clips (and control images) ready for the VAE."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .buckets import BucketSelector, divisible_by
from .frames import clip_positions, frames_needed
from .media import image_to_bucket, load_image, load_video, to_pixels
from .spec import MediaEntry


@dataclass
class DecodedEntry:
    """Pixels of one file: ``clips`` as ``(start, frames, (w, h), pixels (F, H, W, 3))`` plus controls."""

    clips: list[tuple[int, int, tuple[int, int], torch.Tensor]]
    controls: list[torch.Tensor] = field(default_factory=list)
    note: str = ""


def decode_entry(entry: MediaEntry, temporal_stride: int) -> DecodedEntry:
    """Decode, bucket and crop a file; a video yields one clip per extracted frame window.

    Raises:
        DatasetError: the file (or one of its control images) cannot be used.
    """
    spec = entry.spec
    selector = BucketSelector(spec.resolution, spec.enable_bucket, spec.bucket_no_upscale)
    if entry.kind == "image":
        pixels, size = image_to_bucket(load_image(entry.path, entry.name), selector, entry.name)
        controls = [decode_control(path, entry, size) for path in entry.controls]
        return DecodedEntry([(0, 1, size, to_pixels([pixels]))], controls)
    fps = (spec.source_fps, spec.target_fps) if spec.source_fps else None
    frames, size, note = load_video(entry.path, entry.name, selector, fps, frames_needed(spec))
    positions = clip_positions(len(frames), spec, temporal_stride)
    clips = [(start, count, size, to_pixels(frames[start : start + count])) for start, count in positions]
    if not clips:
        wanted = "/".join(str(f) for f in spec.target_frames)
        note = f"only {len(frames)} frames, fewer than target_frames {wanted}; no clip taken"
    elif entry.controls:
        note = (note + "; " if note else "") + "control images are used with image items only; ignored"
    return DecodedEntry(clips, [], note or "")


def decode_control(path, entry: MediaEntry, target_size: tuple[int, int]) -> torch.Tensor:
    """A control image resized like musubi: to the target's bucket, its own ``control_resolution``
    bucket, or (``no_resize_control``) its own size rounded down to 16."""
    spec = entry.spec
    name = f"{entry.name} (control {path.name})"
    image = load_image(path, name)
    if spec.no_resize_control:
        size = (divisible_by(image.shape[1], 16), divisible_by(image.shape[0], 16))
        selector = BucketSelector(size, enable_bucket=False)
    elif spec.control_resolution:
        selector = BucketSelector(spec.control_resolution, enable_bucket=True)
    else:
        selector = BucketSelector(target_size, enable_bucket=False)
    pixels, _ = image_to_bucket(image, selector, name)
    return to_pixels([pixels])
