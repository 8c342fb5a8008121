"""Settings of one dataset (a folder, or one ``[[datasets]]`` entry of a musubi TOML) and its files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...common.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif")
FRAME_EXTRACTIONS = ("head", "chunk", "slide", "uniform", "full")


@dataclass
class DatasetSpec:
    """One dataset's settings (musubi ``dataset_config`` names and defaults where they exist).

    ``kinds`` says which media the directory may hold: a plain folder takes images and videos, a
    musubi image dataset only images, a video dataset only videos. ``kohya_repeat_folders``: read
    one level of subfolders (``N_name`` repeats N times); off for musubi directories.
    """

    directory: Path | None = None
    jsonl_file: Path | None = None
    control_directory: Path | None = None
    cache_directory: Path | None = None
    kinds: tuple[str, ...] = ("image", "video")
    resolution: tuple[int, int] = (960, 544)
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    caption_extension: str = ".txt"
    num_repeats: int = 1
    default_caption: str = ""
    trigger_word: str = ""
    target_frames: tuple[int, ...] = (1,)
    frame_extraction: str = "head"
    frame_stride: int = 1
    frame_sample: int = 1
    max_frames: int = 129
    source_fps: float | None = None
    target_fps: float = 16.0
    control_resolution: tuple[int, int] | None = None
    no_resize_control: bool = False
    kohya_repeat_folders: bool = True

    def validate(self, where: str) -> DatasetSpec:
        """Check value ranges; raises :class:`DatasetError` naming ``where`` (the folder or config)."""
        w, h = self.resolution
        if w < 16 or h < 16:
            raise DatasetError(f"resolution {w}x{h} is too small (at least 16x16)", path=where)
        if self.num_repeats < 1:
            raise DatasetError(f"num_repeats must be at least 1, got {self.num_repeats}", path=where)
        if self.frame_extraction not in FRAME_EXTRACTIONS:
            raise DatasetError(
                f"frame_extraction {self.frame_extraction!r} is not one of {', '.join(FRAME_EXTRACTIONS)}", path=where
            )
        if not self.target_frames or any(f < 1 for f in self.target_frames):
            raise DatasetError(f"target_frames must be positive integers, got {list(self.target_frames)}", path=where)
        if self.frame_stride < 1 or self.frame_sample < 1 or self.max_frames < 1:
            raise DatasetError("frame_stride, frame_sample and max_frames must be at least 1", path=where)
        if self.source_fps is not None and self.source_fps <= 0:
            self.source_fps = None
        if self.caption_extension and not self.caption_extension.startswith("."):
            self.caption_extension = "." + self.caption_extension
        return self

    def image_settings(self) -> dict:
        """The settings that change an image's pixels (part of the cache key)."""
        keys = ("resolution", "enable_bucket", "bucket_no_upscale", "control_resolution", "no_resize_control")
        return {k: _jsonable(getattr(self, k)) for k in keys}

    def video_settings(self) -> dict:
        """The settings that change a video's clips (part of the cache key)."""
        keys = ("target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames")
        extra = {k: _jsonable(getattr(self, k)) for k in keys}
        extra["fps"] = [self.source_fps, self.target_fps] if self.source_fps else None
        return {**self.image_settings(), **extra}

    def describe(self) -> dict:
        """Plain dict of every setting (for the summary)."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass
class MediaEntry:
    """One source file to encode (an image, or a video that yields one or more clips)."""

    path: Path
    name: str
    kind: str
    caption: str
    repeats: int
    spec: DatasetSpec
    controls: list[Path] = field(default_factory=list)
    musubi_cache_dir: Path | None = None


def media_kind(path: Path) -> str | None:
    """``"image"``, ``"video"`` or ``None`` from the file extension (case-insensitive)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None
