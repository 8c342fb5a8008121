"""Resolution buckets and resize-then-center-crop, exactly as musubi-tuner's ``dataset/bucket.py``.

Sizes are ``(width, height)`` throughout, like musubi. The step is 16 for every family HadaKron
trains (training.md §4.1).
"""

from __future__ import annotations

import math

import numpy as np

RESOLUTION_STEP = 16


def divisible_by(num: int, divisor: int) -> int:
    """``num`` rounded down to a multiple of ``divisor``."""
    return num - num % divisor


class BucketSelector:
    """Picks the bucket resolution for an image size (musubi's ``BucketSelector``).

    With bucketing on, candidate widths run from ``√A/2`` to ``√A`` in steps of 16 (``A = W·H``),
    each paired with ``h = A // w`` rounded down to 16, plus the transposes; an item goes to the
    bucket with the nearest aspect ratio. ``no_upscale`` keeps an image smaller than the area at
    its own size (rounded down to 16). With bucketing off there is one bucket, ``resolution``.
    """

    def __init__(
        self,
        resolution: tuple[int, int],
        enable_bucket: bool = True,
        no_upscale: bool = False,
        step: int = RESOLUTION_STEP,
    ):
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.bucket_area = self.resolution[0] * self.resolution[1]
        self.step = step
        if not enable_bucket:
            self.no_upscale = False
            self.bucket_resolutions = [self.resolution]
        else:
            self.no_upscale = no_upscale
            sqrt_size = int(math.sqrt(self.bucket_area))
            min_size = divisible_by(sqrt_size // 2, step)
            resolutions = set()
            for w in range(min_size, sqrt_size + step, step):
                h = divisible_by(self.bucket_area // w, step)
                resolutions.add((w, h))
                resolutions.add((h, w))
            self.bucket_resolutions = sorted(resolutions)
        self.aspect_ratios = np.array([w / h for w, h in self.bucket_resolutions])

    def get_bucket_resolution(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Bucket ``(width, height)`` for an image of ``image_size`` ``(width, height)``."""
        width, height = image_size
        if self.no_upscale and width * height <= self.bucket_area:
            return divisible_by(width, self.step), divisible_by(height, self.step)
        errors = np.abs(self.aspect_ratios - width / height)
        return self.bucket_resolutions[int(errors.argmin())]


def resize_to_bucket(image: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """Scale an ``(H, W, 3)`` uint8 image to cover ``bucket`` (W, H), then center-crop to it.

    Upscaling uses Lanczos and downscaling box filtering (musubi: Lanczos / cv2 INTER_AREA).
    """
    from PIL import Image

    src_h, src_w = image.shape[:2]
    bucket_w, bucket_h = bucket
    if (src_w, src_h) == (bucket_w, bucket_h):
        return image
    scale = max(bucket_w / src_w, bucket_h / src_h)
    new_w, new_h = int(src_w * scale + 0.5), int(src_h * scale + 0.5)
    resample = Image.LANCZOS if scale > 1 else Image.BOX
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    left, top = (new_w - bucket_w) // 2, (new_h - bucket_h) // 2
    return resized[top : top + bucket_h, left : left + bucket_w]
