"""Decoding images (PIL) and videos (PyAV) into bucket-sized uint8 RGB frames.

PIL and av ship with ComfyUI; they are imported inside the functions that decode, so the engine
imports without them. Every failure becomes a :class:`DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...common.errors import DatasetError
from .buckets import BucketSelector, resize_to_bucket

MIN_SIDE = 16


def load_image(path: Path, name: str) -> np.ndarray:
    """Decode an image fully into ``(H, W, 3)`` uint8 RGB (EXIF orientation applied).

    Raises:
        DatasetError: unreadable, truncated, not an image, or a decompression bomb.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = image.convert("RGB")
    except UnidentifiedImageError as exc:
        raise DatasetError("not a readable image (unknown or corrupt format)", path=name) from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"refused: image too large ({exc})", path=name) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode image ({_short(exc)}; truncated or corrupt?)", path=name) from exc
    array = np.asarray(rgb)
    _check_size(array.shape[1], array.shape[0], name)
    return array


def image_to_bucket(image: np.ndarray, selector: BucketSelector, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize/crop an image to its bucket; returns ``(pixels, (width, height))``."""
    bucket = selector.get_bucket_resolution((image.shape[1], image.shape[0]))
    _check_size(*bucket, name)
    return resize_to_bucket(image, bucket), bucket


def load_video(
    path: Path,
    name: str,
    selector: BucketSelector,
    fps: tuple[float, float] | None = None,
    limit: int | None = None,
) -> tuple[list[np.ndarray], tuple[int, int], str | None]:
    """Decode a video's frames, resized to the bucket of its first frame (musubi).

    Args:
        fps: ``(source_fps, target_fps)`` to drop frames as musubi does, or ``None`` to keep all.
        limit: stop after this many (kept) frames; ``None`` decodes everything.

    Returns:
        ``(frames, (width, height), note)`` with ``frames`` ``(H, W, 3)`` uint8 arrays; ``note``
        says decoding stopped early at a damaged part (the frames before it are kept).

    Raises:
        DatasetError: unreadable, not a video, no decodable frames.
    """
    import av

    frames: list[np.ndarray] = []
    bucket, note = None, None
    keep = _frame_dropper(fps)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError("no video stream found (truncated file, or not a video?)", path=name)
            for frame in container.decode(video=0):
                if not keep():
                    continue
                array = frame.to_ndarray(format="rgb24")
                if bucket is None:
                    _check_size(array.shape[1], array.shape[0], name)
                    bucket = selector.get_bucket_resolution((array.shape[1], array.shape[0]))
                    _check_size(*bucket, name)
                frames.append(resize_to_bucket(array, bucket))
                if limit is not None and len(frames) >= limit:
                    break
    except DatasetError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        if not frames:
            raise DatasetError(f"cannot decode video ({_short(exc)}; truncated or corrupt?)", path=name) from exc
        note = f"decoding stopped after {len(frames)} frames ({_short(exc)}); the rest of the video is damaged"
    if not frames:
        raise DatasetError("no video frames could be decoded", path=name)
    return frames, bucket, note


def _frame_dropper(fps: tuple[float, float] | None):
    """musubi's source_fps → target_fps frame dropping as a stateful ``keep()`` predicate."""
    if not fps:
        return lambda: True
    source_fps, target_fps = fps
    delta = target_fps / source_fps
    state = {"position": 0.0, "previous": -1}

    def keep() -> bool:
        index = int(state["position"])
        state["position"] += delta
        if index == state["previous"]:
            return False
        state["previous"] = index
        return True

    return keep


def to_pixels(frames: list[np.ndarray]):
    """Stack uint8 frames into a float32 ``(F, H, W, 3)`` tensor in [0, 1] (ComfyUI IMAGE layout)."""
    import torch

    stacked = np.stack(frames, axis=0)
    return torch.from_numpy(stacked).to(torch.float32).div_(255.0)


def _check_size(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise DatasetError(f"too small: {width}x{height} (at least {MIN_SIDE}x{MIN_SIDE} pixels)", path=name)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
