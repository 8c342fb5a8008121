"""musubi-tuner ``dataset_config`` TOML: ``[general]`` plus ``[[datasets]]`` image/video entries.

Keys and defaults follow musubi's ``dataset/config_utils.py`` (training.md §4.1). Directory and
file values may be absolute or relative to the TOML's folder, but must resolve inside the allowed
roots (symlinks included).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ...common.errors import DatasetError, PathOutsideRootError
from .sources import Problems, display_name, inside_roots
from .spec import DatasetSpec

_PATH_KEYS = {
    "image_directory": "directory",
    "video_directory": "directory",
    "image_jsonl_file": "jsonl_file",
    "video_jsonl_file": "jsonl_file",
    "control_directory": "control_directory",
    "cache_directory": "cache_directory",
}
_SIMPLE_KEYS = {
    "caption_extension": str,
    "num_repeats": int,
    "enable_bucket": bool,
    "bucket_no_upscale": bool,
    "frame_extraction": str,
    "frame_stride": int,
    "frame_sample": int,
    "max_frames": int,
    "source_fps": (int, float),
    "no_resize_control": bool,
}
_PAIR_KEYS = ("resolution", "control_resolution")
_IGNORED_KEYS = ("batch_size", "skip_corrupted_cache", "debug_dataset", "fp_latent_window_size", "fp_1f_clean_indices")
_GENERAL_KEYS = ("resolution", "caption_extension", "batch_size", "num_repeats", "enable_bucket", "bucket_no_upscale")


def parse_toml_bytes(data: bytes, label: str) -> dict:
    """Parse TOML (``tomllib``; ``tomli`` on Python 3.10) into a dict; errors name ``label``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise DatasetError("reading TOML needs Python 3.11+ (or the tomli package)", path=label) from exc
    try:
        return tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DatasetError("dataset config is not UTF-8 text", path=label) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"invalid TOML: {exc}", path=label) from exc


def load_dataset_config(
    path: Path, roots: list[Path], base: Path, defaults: DatasetSpec, problems: Problems
) -> list[DatasetSpec]:
    """Read a musubi dataset config and return one :class:`DatasetSpec` per ``[[datasets]]`` entry.

    ``defaults`` supplies what the TOML cannot say (default caption, trigger word, target fps);
    the musubi defaults apply to everything else.

    Raises:
        DatasetError: unreadable or invalid TOML, no datasets, wrong value types.
        PathOutsideRootError: a directory or file outside the allowed roots.
    """
    label = display_name(path, base)
    try:
        config = parse_toml_bytes(path.read_bytes(), label)
    except OSError as exc:
        raise DatasetError(f"cannot read dataset config: {exc.strerror or exc}", path=label) from exc
    general = config.get("general", {})
    datasets = config.get("datasets", [])
    if not isinstance(general, dict) or not isinstance(datasets, list) or not datasets:
        raise DatasetError("dataset config needs at least one [[datasets]] table (plus optional [general])", label)
    for key in general:
        if key not in _GENERAL_KEYS:
            problems.note(label, f"[general] key {key!r} is not used by HadaKron")
    specs = []
    for index, entry in enumerate(datasets):
        where = f"{label} [[datasets]] #{index + 1}"
        if not isinstance(entry, dict):
            raise DatasetError("each [[datasets]] entry must be a table", path=where)
        merged = {**general, **entry}
        specs.append(_dataset_spec(merged, where, path.parent, roots, defaults, problems))
    return specs


def _dataset_spec(values: dict, where: str, folder: Path, roots, defaults: DatasetSpec, problems) -> DatasetSpec:
    is_video = "video_directory" in values or "video_jsonl_file" in values
    is_image = "image_directory" in values or "image_jsonl_file" in values
    if is_video == is_image:
        raise DatasetError("needs one of image_directory/image_jsonl_file or video_directory/video_jsonl_file", where)
    fields = {
        "kinds": ("video",) if is_video else ("image",),
        "resolution": (960, 544),
        "enable_bucket": False,
        "bucket_no_upscale": False,
        "caption_extension": ".txt",
        "num_repeats": 1,
        "kohya_repeat_folders": False,
    }
    for key, value in values.items():
        if key in _PATH_KEYS:
            fields[_PATH_KEYS[key]] = resolve_config_path(value, key, folder, roots, where)
        elif key in _SIMPLE_KEYS:
            fields[key] = _typed(value, _SIMPLE_KEYS[key], key, where)
        elif key in _PAIR_KEYS:
            fields[key] = _pair(value, key, where)
        elif key == "target_frames":
            fields[key] = tuple(_typed(v, int, key, where) for v in _listed(value, key, where))
        elif key in _IGNORED_KEYS:
            continue
        else:
            problems.note(where, f"key {key!r} is not supported by HadaKron and was ignored")
    for name in ("default_caption", "trigger_word", "target_fps"):
        fields[name] = getattr(defaults, name)
    spec = dataclasses.replace(DatasetSpec(), **fields)
    if spec.source_fps is not None:
        spec.source_fps = float(spec.source_fps)
    return spec.validate(where)


def resolve_config_path(value, key: str, folder: Path, roots: list[Path], where: str) -> Path:
    """Resolve a path from the config (absolute, or relative to the config's folder) inside ``roots``."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise DatasetError(f"{key} must be a non-empty path string", path=where)
    candidate = Path(value) if os.path.isabs(value) else folder / value
    if not inside_roots(candidate, roots):
        raise PathOutsideRootError(f"{key} {value!r} is outside the allowed dataset folders", path=where)
    if key.endswith("_directory") and key != "cache_directory" and not candidate.is_dir():
        raise DatasetError(f"{key} {value!r} is not a folder", path=where)
    if key.endswith("_file") and not candidate.is_file():
        raise DatasetError(f"{key} {value!r} does not exist", path=where)
    return Path(os.path.realpath(candidate))


def _typed(value, kind, key: str, where: str):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else "number"
        raise DatasetError(f"{key} must be {names}, got {value!r}", path=where)
    return value


def _listed(value, key: str, where: str) -> list:
    if isinstance(value, list):
        return value
    raise DatasetError(f"{key} must be a list, e.g. [1, 25, 45]", path=where)


def _pair(value, key: str, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise DatasetError(f"{key} must be an integer or [width, height], got {value!r}", path=where)
