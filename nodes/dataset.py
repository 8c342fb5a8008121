"""Nodes: Adapter Dataset from Folder (``HadaKronDatasetFromFolder``) and from Latents
(``HadaKronDatasetFromLatents``, ComfyUI's native LATENT/CONDITIONING lists).

Reads a folder (or a musubi ``dataset_config`` TOML) inside ComfyUI's input folder or a root
registered under the ``hadakron_datasets`` folder type, encodes every item once with the VAE (and
captions with the CLIP) and caches the results under the ``hadakron_cache`` folder type (default
``<output>/hadakron_cache``; never the temp folder, which ComfyUI empties).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import comfy.latent_formats
import comfy.utils
import folder_paths
import torch

from ..common.errors import DatasetError
from ..common.paths import check_relative_name, is_within, resolve_inside
from ..training.data import from_native_lists
from ..training.dataset import (
    FRAME_EXTRACTIONS,
    BuildOptions,
    DatasetSpec,
    MusubiCacheReader,
    Problems,
    build_dataset,
    specs_for_source,
)
from ..training.dataset.text import plain_conditioning
from ._comfy import io, schema
from .guard import run_guarded

DATASETS_FOLDER = "hadakron_datasets"
CACHE_FOLDER = "hadakron_cache"
CACHE_MODES = ("on", "off", "musubi_cache")
FINGERPRINT_FILE_LIMIT = 20000

HadaKronDataset = io.Custom("HADAKRON_DATASET")


def register_folder_types() -> None:
    """Make ``hadakron_datasets`` a known folder type (empty unless extra_model_paths adds roots)."""
    if DATASETS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[DATASETS_FOLDER] = ([], set())


register_folder_types()


def dataset_roots() -> list[Path]:
    """ComfyUI's input folder plus every ``hadakron_datasets`` root."""
    roots = [Path(folder_paths.get_input_directory())]
    roots += [Path(p) for p in folder_paths.get_folder_paths(DATASETS_FOLDER)]
    return roots


def cache_root() -> Path:
    """The first ``hadakron_cache`` folder outside ComfyUI's temp folder (which ComfyUI empties)
    if one is configured, else ``<output>/hadakron_cache``."""
    temp = Path(os.path.realpath(folder_paths.get_temp_directory()))
    if CACHE_FOLDER in folder_paths.folder_names_and_paths:
        for path in folder_paths.get_folder_paths(CACHE_FOLDER):
            if not is_within(Path(os.path.realpath(path)), temp):
                return Path(path)
    return Path(folder_paths.get_output_directory()) / CACHE_FOLDER


def resolve_source(name: str) -> tuple[Path, Path, list[Path]]:
    """``(source path, root it lies in, all roots)`` for a user-given folder or TOML name.

    Raises:
        PathOutsideRootError: absolute paths, ``..``, symlinks leaving the roots.
        FileNotFoundError: no root holds the name.
    """
    name = check_relative_name(name.strip())
    roots = dataset_roots()
    source = resolve_inside(name, roots)
    for root in roots:
        if is_within(source, Path(os.path.realpath(root))):
            return source, Path(os.path.realpath(root)), roots
    return source, source.parent, roots


def parse_target_frames(text: str) -> tuple[int, ...]:
    """``"1, 17, 33"`` -> ``(1, 17, 33)``; raises :class:`DatasetError` on anything else."""
    try:
        values = tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError as exc:
        raise DatasetError(f"target_frames must be integers separated by commas, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise DatasetError(f"target_frames must be positive integers, got {text!r}")
    return values


def _denormalize(format_name: str, latent):
    return getattr(comfy.latent_formats, format_name)().process_out(latent)


def _progress():
    state = {}

    def report(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(total)
        state["bar"].update_absolute(done, total)

    return report


def _fps_input(name: str, default: float, tooltip: str, minimum: float = 0.0) -> io.Float.Input:
    """A frame-rate input (frames per second, up to 1000)."""
    return io.Float.Input(name, default=default, min=minimum, max=1000.0, step=0.001, tooltip=tooltip)


def _inputs() -> list:
    return [
        io.String.Input(
            "folder",
            default="",
            tooltip="Dataset folder inside ComfyUI's input folder (or a 'hadakron_datasets' root from "
            "extra_model_paths.yaml), or a musubi-tuner dataset_config .toml there. Images "
            "(png/jpg/jpeg/webp/bmp) and videos (mp4/webm/mov/gif) with same-name caption files; "
            "'N_name' subfolders repeat N times; a 'control' subfolder holds edit control images.",
        ),
        io.Vae.Input("vae", tooltip="VAE of the model family to train; every item is encoded with it once."),
        io.Clip.Input(
            "clip",
            optional=True,
            tooltip="Text encoder for the captions (optional: without it items carry captions but no conditioning).",
        ),
        io.Int.Input(
            "width",
            default=1024,
            min=16,
            max=8192,
            step=16,
            tooltip="Training resolution width (the bucket area is width x height).",
        ),
        io.Int.Input("height", default=1024, min=16, max=8192, step=16, tooltip="Training resolution height."),
        io.Boolean.Input(
            "enable_bucket",
            default=True,
            tooltip="Aspect-ratio buckets with step 16 like musubi-tuner; "
            "off: every item is resized and center-cropped to width x height.",
        ),
        io.Boolean.Input(
            "bucket_no_upscale",
            default=False,
            tooltip="Keep images smaller than the bucket area at "
            "their own size (rounded down to 16) instead of upscaling.",
        ),
        io.Int.Input(
            "num_repeats",
            default=1,
            min=1,
            max=10000,
            tooltip="Times each item appears per epoch (multiplied with 'N_name' subfolder repeats).",
        ),
        io.String.Input("caption_extension", default=".txt", tooltip="Extension of caption files next to the media."),
        io.String.Input("default_caption", default="", tooltip="Caption for files without a caption file."),
        io.String.Input("trigger_word", default="", tooltip="Prefixed to every caption (once) when not empty."),
        io.String.Input(
            "target_frames",
            default="1",
            tooltip="Video clip lengths in frames, comma-separated "
            "(4N+1 for WAN/HunyuanVideo, e.g. '17, 33'); 1 uses single frames.",
        ),
        io.Combo.Input(
            "frame_extraction",
            options=list(FRAME_EXTRACTIONS),
            default="head",
            tooltip="head: first "
            "frames; chunk: consecutive chunks; slide: windows every frame_stride; uniform: frame_sample "
            "evenly spaced clips; full: all frames up to max_frames (rounded to 4N+1).",
        ),
        io.Int.Input("frame_stride", default=1, min=1, max=10000, tooltip="Step between clip starts in 'slide' mode."),
        io.Int.Input(
            "frame_sample", default=1, min=1, max=10000, tooltip="Number of clips per video in 'uniform' mode."
        ),
        io.Int.Input("max_frames", default=129, min=1, max=100000, tooltip="Longest clip in 'full' mode."),
        _fps_input(
            "source_fps",
            0.0,
            "Frame rate of the videos; when set, frames are dropped to reach target_fps (0 keeps every frame).",
        ),
        _fps_input(
            "target_fps",
            16.0,
            "Frame rate the model trains at (WAN 16, HunyuanVideo 24, FramePack 30); used with source_fps.",
            minimum=1.0,
        ),
        io.Combo.Input(
            "cache",
            options=list(CACHE_MODES),
            default="on",
            tooltip="on: reuse and write encodings in "
            "the hadakron_cache folder (a re-run encodes nothing, a changed file only itself); off: "
            "encode in memory; musubi_cache: first reuse musubi-tuner caches in the dataset's "
            "cache_directory (or the data folder) where they fit this VAE.",
        ),
        io.Int.Input(
            "vae_batch_size",
            default=4,
            min=1,
            max=256,
            tooltip="Images of one bucket per VAE call (video VAEs always encode one clip at a time).",
        ),
    ]


class DatasetFromFolder(io.ComfyNode):
    """Encode a folder of images/videos (or a musubi TOML) once into a cached training dataset."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="HadaKronDatasetFromFolder",
            display_name="Adapter Dataset from Folder",
            category="HadaKron/train",
            description="Reads images and videos with captions (or a musubi-tuner dataset_config), buckets them "
            "like musubi-tuner, encodes each once with the VAE/CLIP and caches the result for training.",
            inputs=_inputs(),
            is_output_node=True,  # may run alone to fill the cache before training
            outputs=[
                HadaKronDataset.Output(display_name="dataset"),
                io.String.Output(display_name="summary"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder="", **kwargs):
        """Re-run when any file in the dataset changes (names, sizes, modification times)."""
        try:
            source, base, roots = resolve_source(folder)
            folders = [source]
            if source.is_file():
                specs = specs_for_source(source, base, roots, DatasetSpec(), Problems())
                folders = [p for s in specs for p in (s.directory, s.jsonl_file, s.control_directory) if p]
            return _tree_signature(source, folders)
        except Exception:  # invalid input or config: always run, execute() reports the problem
            return math.nan

    @classmethod
    def execute(cls, folder, vae, width, height, clip=None, cache="on", vae_batch_size=4, **settings):
        def work():
            source, base, roots = resolve_source(folder)
            defaults = _defaults(width, height, settings)
            problems = Problems()
            specs = specs_for_source(source, base, roots, defaults, problems)
            options = BuildOptions(
                roots=roots,
                base=base,
                cache_root=None if cache == "off" else cache_root(),
                batch_size=vae_batch_size,
                musubi=_musubi_reader(vae) if cache == "musubi_cache" else None,
                progress=_progress(),
                label=folder,
            )
            dataset = build_dataset(specs, vae, clip, options, problems)
            text = dataset.summary()
            return io.NodeOutput(dataset, text, ui={"text": [text]})

        return run_guarded(work)


class DatasetFromLatents(io.ComfyNode):
    """Wrap ComfyUI's native dataset lists (MakeTrainingDataset's LATENT and CONDITIONING lists)."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="HadaKronDatasetFromLatents",
            display_name="Adapter Dataset from Latents",
            category="HadaKron/train",
            description="Turns the LATENT and CONDITIONING lists of ComfyUI's own dataset nodes into a HadaKron "
            "training dataset, so both ecosystems' datasets feed the HadaKron trainer.",
            is_input_list=True,
            inputs=[
                io.Latent.Input(
                    "latents", tooltip="List of latents (e.g. from MakeTrainingDataset); a batch of B becomes B items."
                ),
                io.Conditioning.Input(
                    "conditioning", tooltip="List of conditionings: one per latent, or a single one shared by all."
                ),
            ],
            outputs=[
                HadaKronDataset.Output(display_name="dataset"),
                io.String.Output(display_name="summary"),
            ],
        )

    @classmethod
    def execute(cls, latents, conditioning):
        def work():
            if not latents or any(not isinstance(x, dict) or "samples" not in x for x in latents):
                raise DatasetError("latents must be a non-empty list of LATENT dicts")
            if not conditioning or len(conditioning) not in (1, len(latents)):
                raise DatasetError(
                    f"got {len(conditioning or [])} conditionings for {len(latents)} latents (need 1 or one each)"
                )
            dataset = from_native_lists(latents, conditioning)
            with torch.inference_mode(False):
                for item in dataset.items:
                    item.latent = item.latent.detach().to("cpu", torch.float32).clone()
                    item.conditioning = plain_conditioning(item.conditioning)
            text = dataset.summary()
            return io.NodeOutput(dataset, text, ui={"text": [text]})

        return run_guarded(work)


def _defaults(width: int, height: int, settings: dict) -> DatasetSpec:
    source_fps = float(settings.get("source_fps", 0.0) or 0.0)
    return DatasetSpec(
        resolution=(int(width), int(height)),
        enable_bucket=bool(settings.get("enable_bucket", True)),
        bucket_no_upscale=bool(settings.get("bucket_no_upscale", False)),
        caption_extension=str(settings.get("caption_extension", ".txt")).strip(),
        num_repeats=int(settings.get("num_repeats", 1)),
        default_caption=str(settings.get("default_caption", "")),
        trigger_word=str(settings.get("trigger_word", "")),
        target_frames=parse_target_frames(str(settings.get("target_frames", "1"))),
        frame_extraction=str(settings.get("frame_extraction", "head")),
        frame_stride=int(settings.get("frame_stride", 1)),
        frame_sample=int(settings.get("frame_sample", 1)),
        max_frames=int(settings.get("max_frames", 129)),
        source_fps=source_fps if source_fps > 0 else None,
        target_fps=float(settings.get("target_fps", 16.0)),
    )


def _musubi_reader(vae) -> MusubiCacheReader:
    channels = getattr(vae, "latent_channels", None)
    ndim = 4 if int(getattr(vae, "latent_dim", 2)) == 3 else 3
    return MusubiCacheReader(_denormalize, channels, ndim)


def _tree_signature(source: Path, folders: list[Path]) -> str | float:
    digest = hashlib.sha256(str(source).encode())
    paths = [source] + [f for f in folders if f.is_file()]
    count = 0
    for folder in (f for f in folders if f.is_dir()):
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                paths.append(Path(dirpath) / name)
                count += 1
            if count > FINGERPRINT_FILE_LIMIT:
                return math.nan  # too many files to stat cheaply: always re-run (the cache makes it fast)
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


NODES = [DatasetFromFolder, DatasetFromLatents]
