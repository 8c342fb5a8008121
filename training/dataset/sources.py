"""Finding the files of a dataset: a folder (with kohya ``N_name`` repeat subfolders and a
``control/`` subfolder) or a musubi JSONL caption file. Every path must stay inside the allowed roots.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ...common.paths import is_within
from .captions import decode_caption_bytes, finalize_caption, read_caption
from .spec import DatasetSpec, MediaEntry, media_kind

CONTROL_FOLDER = "control"
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


class Problems:
    """Collects ``(file, reason)`` pairs: ``skipped`` files are not used, ``notes`` only inform."""

    def __init__(self):
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []

    def skip(self, name: str, reason: str) -> None:
        """Record a file that will not be used."""
        self.skipped.append((name, reason))

    def note(self, name: str, message: str) -> None:
        """Record something the user should know about a file that is still used."""
        self.notes.append((name, message))


def inside_roots(path: Path, roots: Iterable[Path]) -> bool:
    """True if ``path`` (after resolving symlinks) lies in one of ``roots``."""
    real = Path(os.path.realpath(path))
    return any(is_within(real, Path(os.path.realpath(root))) for root in roots)


def display_name(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` with ``/`` separators (the name shown in summaries)."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def scan_folder(spec: DatasetSpec, roots: list[Path], base: Path, problems: Problems) -> list[MediaEntry]:
    """Entries for the media files of ``spec.directory`` and its one-level subfolders.

    A subfolder named ``N_name`` repeats its files N times (kohya/sd-scripts; other subfolders
    once, as ComfyUI's own dataset loader does); the ``control`` subfolder holds control images.
    musubi directories (``kohya_repeat_folders`` off) take top-level files only. Files of other
    types (captions, notes) are ignored; symlinks leaving the roots are skipped with a reason.
    """
    directory = spec.directory
    entries: list[MediaEntry] = []
    for path, repeats in _folder_files(directory, spec, base, problems):
        if not inside_roots(path, roots):
            problems.skip(display_name(path, base), "symlink leads outside the allowed folders; refused")
            continue
        kind = media_kind(path)
        if kind is None or kind not in spec.kinds:
            continue
        name = display_name(path, base)
        caption = _caption_for(path, spec, name, (roots, base), problems)
        controls = find_controls(path, spec, roots, base, problems)
        entries.append(MediaEntry(path, name, kind, caption, repeats * spec.num_repeats, spec, controls))
    return entries


def _folder_files(directory: Path, spec: DatasetSpec, base: Path, problems: Problems):
    """Top-level files, then (ComfyUI/kohya layout only) the files of one-level subfolders."""
    for child in _sorted_children(directory, base, problems):
        if child.is_dir():
            if not spec.kohya_repeat_folders or child.name == CONTROL_FOLDER or child.name.startswith("."):
                continue
            match = _REPEAT_FOLDER.match(child.name)
            repeats = max(1, int(match.group(1))) if match else 1
            for sub in _sorted_children(child, base, problems):
                if sub.is_file() or sub.is_symlink():
                    yield sub, repeats
        elif child.is_file() or child.is_symlink():
            yield child, 1


def _sorted_children(directory: Path, base: Path, problems: Problems) -> list[Path]:
    try:
        return sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        problems.skip(display_name(directory, base), f"folder unreadable: {exc.strerror or exc}")
        return []


def _caption_for(path: Path, spec: DatasetSpec, name: str, where: tuple, problems: Problems) -> str:
    roots, base = where
    text = None
    caption_path = path.with_suffix(spec.caption_extension) if spec.caption_extension else None
    if caption_path is not None and caption_path.exists() and not inside_roots(caption_path, roots):
        problems.note(display_name(caption_path, base), "symlink leads outside the allowed folders; caption ignored")
    elif caption_path is not None:
        text, note = read_caption(caption_path)
        if note:
            problems.note(display_name(caption_path, base), note)
    caption = finalize_caption(text, spec.default_caption, spec.trigger_word)
    if not caption:
        problems.note(name, "no caption (no caption file, default caption or trigger word); trained unconditioned")
    return caption


def find_controls(path: Path, spec: DatasetSpec, roots: list[Path], base: Path, problems: Problems) -> list[Path]:
    """Control images for ``path``: same stem (or ``stem_0``, ``stem_1`` …) in the control folder.

    The control folder is ``spec.control_directory`` (musubi) or a ``control/`` subfolder next to
    the file.
    """
    folder = spec.control_directory or path.parent / CONTROL_FOLDER
    if not folder.is_dir():
        return []
    stem = path.stem
    pattern = re.compile(rf"^{re.escape(stem)}(?:_(\d+))?$")
    found = []
    for candidate in _sorted_children(folder, base, problems):
        match = pattern.match(candidate.stem)
        if not match or media_kind(candidate) != "image":
            continue
        if not inside_roots(candidate, roots):
            problems.skip(display_name(candidate, base), "symlink leads outside the allowed folders; refused")
            continue
        found.append((int(match.group(1)) if match.group(1) else -1, candidate))
    return [p for _, p in sorted(found, key=lambda t: (t[0], t[1].name))]


def scan_jsonl(spec: DatasetSpec, roots: list[Path], base: Path, problems: Problems) -> list[MediaEntry]:
    """Entries from a musubi ``image_jsonl_file``/``video_jsonl_file``.

    Each line is ``{"image_path" | "video_path": …, "caption": …, "control_path[_N]": …}``; relative
    paths are taken relative to the JSONL file's folder.
    """
    jsonl = spec.jsonl_file
    label = display_name(jsonl, base)
    try:
        raw = jsonl.read_bytes()
    except OSError as exc:
        problems.skip(label, f"unreadable: {exc.strerror or exc}")
        return []
    text, note = decode_caption_bytes(raw)
    if note:
        problems.note(label, note.replace("caption", "JSONL file"))
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entry = _jsonl_entry(line, f"{label}:{number}", spec, roots, jsonl.parent, base, problems)
            if entry is not None:
                entries.append(entry)
    return entries


def _jsonl_entry(line, where, spec, roots, folder, base, problems) -> MediaEntry | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        problems.skip(where, f"not valid JSON ({exc.msg})")
        return None
    key = "video_path" if spec.kinds == ("video",) else "image_path"
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, str) or not value:
        problems.skip(where, f"line has no {key!r}")
        return None
    path = Path(value) if os.path.isabs(value) else folder / value
    if not inside_roots(path, roots):
        problems.skip(where, f"{value}: outside the allowed folders; refused")
        return None
    kind = media_kind(path)
    if kind is None or kind not in spec.kinds:
        problems.skip(where, f"{value}: not a supported {'/'.join(spec.kinds)} file")
        return None
    caption = finalize_caption(str(record.get("caption") or "").strip(), spec.default_caption, spec.trigger_word)
    controls = []
    for ckey in sorted(k for k in record if k.startswith("control_path")):
        cpath = Path(record[ckey]) if os.path.isabs(str(record[ckey])) else folder / str(record[ckey])
        if inside_roots(cpath, roots):
            controls.append(cpath)
        else:
            problems.skip(where, f"{record[ckey]}: control image outside the allowed folders; refused")
    if not controls and spec.control_directory:
        controls = find_controls(path, spec, roots, base, problems)
    return MediaEntry(path, display_name(path, base), kind, caption, spec.num_repeats, spec, controls)
