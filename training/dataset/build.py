"""Building an :class:`AdapterDataset` from dataset specs: discover, decode, encode once, cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...common.errors import DatasetError
from ..data import AdapterDataset, TrainingItem
from .batcher import LatentBatcher
from .cache import CachedEntry, DiskCache, file_digest, make_key
from .decode import decode_entry
from .encode import ClipEncoder, VaeEncoder
from .frames import valid_frame_count
from .musubi_cache import MusubiCacheReader
from .sources import Problems, display_name, scan_folder, scan_jsonl
from .spec import DatasetSpec, MediaEntry
from .text import TextEncoding

Progress = Callable[[int, int], None]


@dataclass
class BuildOptions:
    """How to build: where the cache lives, batching, musubi cache reuse, progress reporting.

    Attributes:
        roots: folders every dataset file must stay inside (symlinks resolved).
        base: folder display names are relative to (e.g. ComfyUI's input folder).
        cache_root: HadaKron's cache folder; ``None`` disables the disk cache.
        batch_size: images of one bucket encoded per VAE call (video VAEs always take one clip).
        musubi: a :class:`MusubiCacheReader` to reuse musubi caches first, or ``None``.
        progress: ``progress(done, total)`` over the files that need encoding.
        label: what the user asked for (folder or config name), used in messages.
    """

    roots: list[Path]
    base: Path
    cache_root: Path | None = None
    batch_size: int = 4
    musubi: MusubiCacheReader | None = None
    progress: Progress | None = None
    label: str = "dataset"
    stats: dict = field(default_factory=dict)


def collect_entries(specs: list[DatasetSpec], options: BuildOptions, problems: Problems) -> list[MediaEntry]:
    """All media entries of all specs (folders and JSONL files), in a stable order."""
    entries: list[MediaEntry] = []
    for spec in specs:
        if spec.jsonl_file is not None:
            found = scan_jsonl(spec, options.roots, options.base, problems)
        elif spec.directory is not None:
            found = scan_folder(spec, options.roots, options.base, problems)
        else:
            found = []
        for entry in found:
            entry.musubi_cache_dir = spec.cache_directory or entry.path.parent
        entries += found
    return entries


def build_dataset(
    specs: list[DatasetSpec], vae, clip, options: BuildOptions, problems: Problems | None = None
) -> AdapterDataset:
    """Encode every file once (or take it from the cache) and return the dataset.

    Args:
        specs: the datasets (one for a folder, one per ``[[datasets]]`` of a TOML).
        vae: a ComfyUI VAE (anything with ``encode(pixels)``).
        clip: a ComfyUI CLIP, or ``None`` to leave conditioning empty.
        problems: earlier notes (e.g. from reading a TOML) to carry into the summary.

    Raises:
        DatasetError: nothing found, or every file was unusable (the message lists why).
    """
    problems = problems if problems is not None else Problems()
    encoder = VaeEncoder(vae)
    _fit_target_frames(specs, encoder.temporal_stride, problems, options.label)
    entries = collect_entries(specs, options, problems)
    if not entries:
        raise DatasetError(_nothing_found(problems), path=options.label)
    cache = DiskCache(options.cache_root if encoder.identity else None)
    if options.cache_root is not None and not encoder.identity:
        problems.note(options.label, "the VAE's weights cannot be fingerprinted; latents are not cached")
    results, musubi_conds = _encode_all(entries, encoder, cache, options, problems)
    items = _make_items(entries, results, musubi_conds, problems)
    if not items:
        raise DatasetError("no usable items:\n" + "\n".join(f"  {n}: {r}" for n, r in problems.skipped), options.label)
    text = TextEncoding(ClipEncoder(clip) if clip is not None else None, DiskCache(options.cache_root), options.stats)
    dataset = AdapterDataset(items=items, skipped=problems.skipped, notes=problems.notes)
    text.apply(dataset, problems, options.label)
    keys = (
        ["encoded", "cached"]
        + (["musubi"] if options.musubi else [])
        + (["text_encoded", "text_cached"] if clip else [])
    )
    dataset.cache_stats = {k: options.stats.get(k, 0) for k in keys}
    return dataset


def _fit_target_frames(specs: list[DatasetSpec], stride: int, problems: Problems, label: str) -> None:
    for spec in specs:
        if "video" not in spec.kinds:
            continue
        fitted = []
        for frames in spec.target_frames:
            if not valid_frame_count(frames, stride):
                rounded = (frames - 1) // stride * stride + 1
                problems.note(label, f"target_frames {frames} is not {stride}N+1 for this VAE; using {rounded}")
                frames = rounded
            if frames not in fitted:
                fitted.append(frames)
        spec.target_frames = tuple(fitted)


def _entry_key(entry: MediaEntry, encoder: VaeEncoder) -> str:
    spec = entry.spec
    settings = spec.video_settings() if entry.kind == "video" else spec.image_settings()
    controls = [file_digest(path) for path in entry.controls]
    return make_key("latents", entry.kind, file_digest(entry.path), controls, settings, encoder.identity)


def _encode_all(entries, encoder: VaeEncoder, cache: DiskCache, options: BuildOptions, problems: Problems):
    results: dict[int, CachedEntry] = {}
    musubi_conds: dict[int, list] = {}
    stats = options.stats
    index_of = {id(entry): i for i, entry in enumerate(entries)}
    todo: list[tuple[MediaEntry, str]] = []
    for entry in entries:
        try:
            key = _entry_key(entry, encoder)
        except OSError as exc:
            problems.skip(entry.name, f"cannot read file: {exc.strerror or exc}")
            continue
        cached = cache.load_entry(key)
        if cached is not None:
            results[index_of[id(entry)]] = cached
            stats["cached"] = stats.get("cached", 0) + 1
            continue
        if options.musubi is not None and _take_musubi(entry, options, results, musubi_conds, index_of, problems):
            continue
        todo.append((entry, key))
    _encode_pending(todo, encoder, cache, options, problems, results, index_of)
    return results, musubi_conds


def _take_musubi(entry, options, results, musubi_conds, index_of, problems) -> bool:
    found, conditioning, reason = options.musubi.read(entry)
    if found is None:
        problems.note(entry.name, f"musubi cache not used ({reason}); encoding with the VAE")
        return False
    results[index_of[id(entry)]] = found
    if conditioning is not None:
        musubi_conds[index_of[id(entry)]] = conditioning
    options.stats["musubi"] = options.stats.get("musubi", 0) + 1
    return True


def _encode_pending(todo, encoder, cache, options, problems, results, index_of) -> None:
    total, done = len(todo), [0]

    def finished(entry: MediaEntry, key: str, cached: CachedEntry) -> None:
        cache.save_entry(key, cached, entry.name)
        results[index_of[id(entry)]] = cached
        options.stats["encoded"] = options.stats.get("encoded", 0) + 1
        done[0] += 1
        if options.progress is not None:
            options.progress(done[0], total)

    batcher = LatentBatcher(encoder, options.batch_size, finished)
    if options.progress is not None and total:
        options.progress(0, total)
    with torch.inference_mode():
        for entry, key in todo:
            try:
                decoded = decode_entry(entry, encoder.temporal_stride)
            except DatasetError as exc:
                problems.skip(entry.name, exc.message if exc.path == entry.name else str(exc))
                done[0] += 1
                if options.progress is not None:
                    options.progress(done[0], total)
                continue
            batcher.submit(entry, key, decoded)
        batcher.flush()


def _make_items(entries: list[MediaEntry], results: dict, musubi_conds: dict, problems: Problems) -> list[TrainingItem]:
    items = []
    for index, entry in enumerate(entries):
        cached = results.get(index)
        if cached is None:
            continue
        if not cached.clips:
            problems.skip(entry.name, cached.note or "no clip could be taken")
            continue
        if cached.note:
            problems.note(entry.name, cached.note)
        controls = [_plain(t) for t in cached.controls]
        for clip in cached.clips:
            source = entry.name if entry.kind == "image" else f"{entry.name}[{clip.start}:{clip.start + clip.frames}]"
            items.append(
                TrainingItem(
                    latent=_plain(clip.latent),
                    conditioning=musubi_conds.get(index),
                    caption=entry.caption,
                    source=source,
                    repeats=entry.repeats,
                    control_latents=controls,
                    frames=clip.frames,
                    frame_start=clip.start,
                    pixel_size=clip.size,
                    media=entry.kind,
                )
            )
    return items


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (not inference-mode) fp32 CPU copy, so the trainer may use it under autograd."""
    with torch.inference_mode(False):
        return tensor.detach().to("cpu", torch.float32).clone()


def _nothing_found(problems: Problems) -> str:
    message = "no images or videos found (png/jpg/jpeg/webp/bmp, mp4/webm/mov/gif)"
    if problems.skipped:
        message += ":\n" + "\n".join(f"  {name}: {reason}" for name, reason in problems.skipped)
    return message


__all__ = ["BuildOptions", "build_dataset", "collect_entries", "display_name"]
