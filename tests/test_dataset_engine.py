"""Dataset engine without ComfyUI: buckets, captions, discovery, TOML, frame extraction, decoding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hadakron.common.errors import DatasetError, PathOutsideRootError
from hadakron.training.dataset import (
    BucketSelector,
    DatasetSpec,
    Problems,
    clip_positions,
    collect_entries,
    decode_caption_bytes,
    load_dataset_config,
    resize_to_bucket,
    specs_for_source,
)
from hadakron.training.dataset.build import BuildOptions
from hadakron.training.dataset.media import load_image, load_video

# --- generated media --------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int], value: int = 128, fmt: str | None = None) -> Path:
    """A solid-ish RGB image of ``size`` (W, H) with a gradient so resizes are visible."""
    from PIL import Image

    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[..., 0] = value
    array[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    array[..., 2] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def write_video(path: Path, frames: int = 9, size: tuple[int, int] = (64, 48), fps: int = 8) -> Path:
    """A short generated video (mp4 via libx264, or gif), frame i filled with brightness 20·i."""
    import av

    codec = "gif" if path.suffix == ".gif" else "libx264"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for index in range(frames):
            array = np.full((size[1], size[0], 3), min(255, 20 * index), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def folder_spec(directory: Path, **kw) -> DatasetSpec:
    return DatasetSpec(directory=directory, resolution=(64, 64), enable_bucket=True, **kw).validate("test")


def entries_for(specs, root: Path, problems: Problems | None = None):
    problems = problems or Problems()
    return collect_entries(specs, BuildOptions(roots=[root], base=root), problems), problems


# --- buckets ----------------------------------------------------------------------------------


def test_bucket_resolutions_match_musubi():
    selector = BucketSelector((1024, 1024))
    assert len(selector.bucket_resolutions) == 65
    assert selector.bucket_resolutions[0] == (512, 2048) and selector.bucket_resolutions[-1] == (2048, 512)
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 1024 * 1024 for w, h in selector.bucket_resolutions)
    assert selector.get_bucket_resolution((1920, 1080)) == (1360, 768)
    assert selector.get_bucket_resolution((1080, 1920)) == (768, 1360)
    assert selector.get_bucket_resolution((1000, 1000)) == (1024, 1024)
    default = BucketSelector((960, 544))
    assert (960, 544) in default.bucket_resolutions and (720, 720) in default.bucket_resolutions
    assert default.bucket_resolutions[0] == (352, 1472)


def test_bucket_no_upscale_and_disabled():
    selector = BucketSelector((1024, 1024), enable_bucket=True, no_upscale=True)
    assert selector.get_bucket_resolution((100, 60)) == (96, 48)
    assert selector.get_bucket_resolution((2000, 2000)) == (1024, 1024)
    single = BucketSelector((640, 384), enable_bucket=False, no_upscale=True)
    assert single.bucket_resolutions == [(640, 384)]
    assert single.get_bucket_resolution((100, 60)) == (640, 384)


def test_resize_to_bucket_covers_then_center_crops():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 45:55] = 255  # a bright band in the middle
    out = resize_to_bucket(image, (32, 32))
    assert out.shape == (32, 32, 3)
    assert out[:, 16].mean() > 200 and out[:, 0].mean() < 10  # the band stays centred, the edges are cut
    assert resize_to_bucket(image, (100, 40)) is image
    assert resize_to_bucket(image, (256, 96)).shape == (96, 256, 3)


# --- captions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text", "noted"),
    [
        (b"a cat, sitting", "a cat, sitting", False),
        ("\ufeffcafé".encode(), "café", False),
        ("café ☕".encode("utf-16"), "café ☕", False),
        ("tags".encode("utf-16-le"), "tags", True),
        ("café".encode("latin-1"), "café", True),
    ],
)
def test_caption_encodings(data, text, noted):
    decoded, note = decode_caption_bytes(data)
    assert decoded == text
    assert (note is not None) == noted


def test_folder_discovery_captions_repeats_and_controls(tmp_path):
    root = tmp_path / "input"
    data = root / "set"
    write_image(data / "a.png", (64, 64))
    (data / "a.txt").write_text("a red square", encoding="utf-8")
    write_image(data / "b.jpg", (96, 48), fmt="JPEG")  # no caption -> default
    write_image(data / "c.webp", (48, 64), fmt="WEBP")
    (data / "c.txt").write_bytes("ünïcode".encode("utf-16"))
    write_image(data / "d.bmp", (64, 64), fmt="BMP")
    (data / "d.txt").write_bytes("caf\xe9".encode("latin-1"))
    write_image(data / "3_faces" / "e.png", (64, 64))
    write_image(data / "control" / "a.png", (64, 64))
    write_image(data / "control" / "a_1.png", (64, 64))
    (data / "notes.md").write_text("ignored")
    write_video(data / "clip.gif", frames=5)
    spec = folder_spec(data, default_caption="a photo", trigger_word="sks", num_repeats=2)
    entries, problems = entries_for([spec], root)
    by_name = {e.name: e for e in entries}
    assert sorted(by_name) == ["set/3_faces/e.png", "set/a.png", "set/b.jpg", "set/c.webp", "set/clip.gif", "set/d.bmp"]
    assert by_name["set/a.png"].caption == "sks, a red square"
    assert by_name["set/b.jpg"].caption == "sks, a photo"
    assert by_name["set/c.webp"].caption == "sks, ünïcode"
    assert by_name["set/d.bmp"].caption == "sks, café"
    assert by_name["set/3_faces/e.png"].repeats == 6 and by_name["set/a.png"].repeats == 2
    assert [p.name for p in by_name["set/a.png"].controls] == ["a.png", "a_1.png"]
    assert by_name["set/clip.gif"].kind == "video"
    assert any(name == "set/d.txt" and "Latin-1" in msg for name, msg in problems.notes)


def test_symlink_leaving_root_is_skipped(tmp_path):
    root = tmp_path / "input"
    outside = write_image(tmp_path / "secret" / "x.png", (64, 64))
    write_image(root / "set" / "ok.png", (64, 64))
    os.symlink(outside, root / "set" / "link.png")
    entries, problems = entries_for([folder_spec(root / "set")], root)
    assert [e.name for e in entries] == ["set/ok.png"]
    assert problems.skipped == [("set/link.png", "symlink leads outside the allowed folders; refused")]


def test_empty_folder_is_not_an_error_at_discovery(tmp_path):
    (tmp_path / "input" / "empty").mkdir(parents=True)
    entries, _ = entries_for([folder_spec(tmp_path / "input" / "empty")], tmp_path / "input")
    assert entries == []


# --- musubi TOML ------------------------------------------------------------------------------


def test_toml_config_general_datasets_and_jsonl(tmp_path):
    root = tmp_path / "input"
    write_image(root / "imgs" / "one.png", (64, 64))
    (root / "imgs" / "one.caption").write_text("first")
    write_video(root / "vids" / "v.mp4", frames=9)
    write_image(root / "edit" / "t.png", (64, 64))
    (root / "edit.jsonl").write_text(
        '{"image_path": "edit/t.png", "caption": "target", "control_path": "edit/t.png"}\nnot json\n'
    )
    (root / "config.toml").write_text(
        """
[general]
resolution = [64, 48]
caption_extension = ".caption"
enable_bucket = true
batch_size = 2

[[datasets]]
image_directory = "imgs"
num_repeats = 3

[[datasets]]
video_directory = "vids"
target_frames = [1, 5]
frame_extraction = "chunk"
source_fps = 30.0
resolution = 64

[[datasets]]
image_jsonl_file = "edit.jsonl"
cache_directory = "cache"
flux_kontext_extra = 1
"""
    )
    problems = Problems()
    specs = specs_for_source(root / "config.toml", root, [root], DatasetSpec(default_caption="x"), problems)
    assert [s.kinds for s in specs] == [("image",), ("video",), ("image",)]
    images, videos, jsonl = specs
    assert images.resolution == (64, 48) and images.enable_bucket and images.num_repeats == 3
    assert images.caption_extension == ".caption" and images.directory == (root / "imgs").resolve()
    assert videos.resolution == (64, 64) and videos.target_frames == (1, 5) and videos.frame_extraction == "chunk"
    assert videos.source_fps == 30.0
    assert jsonl.jsonl_file == (root / "edit.jsonl").resolve()
    assert any("flux_kontext_extra" in msg for _, msg in problems.notes)
    entries, problems = entries_for(specs, root, problems)
    assert [(e.name, e.caption, e.repeats) for e in entries] == [
        ("imgs/one.png", "first", 3),
        ("vids/v.mp4", "x", 1),
        ("edit/t.png", "target", 1),
    ]
    assert entries[2].controls == [root / "edit" / "t.png"]
    assert any("not valid JSON" in reason for _, reason in problems.skipped)


def test_toml_errors_name_the_problem(tmp_path):
    root = tmp_path / "input"
    (root / "imgs").mkdir(parents=True)
    bad = root / "bad.toml"
    bad.write_text("[[datasets]\nimage_directory = 'imgs'")
    with pytest.raises(DatasetError, match="bad.toml: invalid TOML"):
        load_dataset_config(bad, [root], root, DatasetSpec(), Problems())
    bad.write_text("[[datasets]]\nimage_directory = 'imgs'\nnum_repeats = 'two'\n")
    with pytest.raises(DatasetError, match="num_repeats must be int"):
        load_dataset_config(bad, [root], root, DatasetSpec(), Problems())
    bad.write_text("[general]\nresolution = 512\n")
    with pytest.raises(DatasetError, match="at least one"):
        load_dataset_config(bad, [root], root, DatasetSpec(), Problems())


@pytest.mark.parametrize("value", ["../outside", "/etc", "link_out"])
def test_toml_paths_outside_roots_are_refused(tmp_path, value):
    root = tmp_path / "input"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link_out")
    config = root / "c.toml"
    config.write_text(f"[[datasets]]\nimage_directory = {value!r}\n")
    with pytest.raises(PathOutsideRootError, match="outside the allowed"):
        load_dataset_config(config, [root], root, DatasetSpec(), Problems())


# --- frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "extra", "expected"),
    [
        ("head", {}, [(0, 5)]),
        ("chunk", {}, [(0, 5), (5, 5)]),
        ("slide", {"frame_stride": 3}, [(0, 5), (3, 5), (6, 5)]),
        ("uniform", {"frame_sample": 3}, [(0, 5), (3, 5), (7, 5)]),
        ("uniform", {"frame_sample": 1}, [(0, 5)]),
        ("full", {}, [(0, 9)]),
        ("full", {"max_frames": 8}, [(0, 5)]),
    ],
)
def test_frame_extraction_modes(mode, extra, expected):
    spec = DatasetSpec(target_frames=(5,), frame_extraction=mode, **extra)
    assert clip_positions(12, spec) == expected


def test_frame_extraction_multiple_targets_and_short_videos():
    spec = DatasetSpec(target_frames=(1, 5, 17), frame_extraction="head")
    assert clip_positions(9, spec) == [(0, 1), (0, 5)]
    assert clip_positions(9, DatasetSpec(target_frames=(17,), frame_extraction="chunk")) == []


# --- decoding ---------------------------------------------------------------------------------


def test_video_decoding_mp4_gif_and_fps_drop(tmp_path):
    selector = BucketSelector((64, 64))
    for name in ("v.mp4", "v.gif"):
        path = write_video(tmp_path / name, frames=9)
        frames, bucket, note = load_video(path, name, selector)
        assert len(frames) == 9 and bucket == (64, 64) and note is None
        assert frames[0].shape == (64, 64, 3)
        assert abs(int(frames[4].mean()) - 80) <= 8  # brightness 20·i survives the codec
    frames, _, _ = load_video(tmp_path / "v.mp4", "v.mp4", selector, fps=(8.0, 4.0))
    assert len(frames) == 5  # 8 -> 4 fps keeps every other frame (0, 2, 4, 6, 8)
    assert abs(int(frames[1].mean()) - 40) <= 8
    frames, _, _ = load_video(tmp_path / "v.mp4", "v.mp4", selector, limit=3)
    assert len(frames) == 3


def test_broken_media_raise_named_errors(tmp_path):
    good = write_image(tmp_path / "good.png", (256, 256))
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match="trunc.png: cannot decode image"):
        load_image(truncated, "trunc.png")
    garbage = tmp_path / "junk.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="junk.jpg: not a readable image"):
        load_image(garbage, "junk.jpg")
    tiny = write_image(tmp_path / "tiny.png", (8, 8))
    with pytest.raises(DatasetError, match="too small"):
        load_image(tiny, "tiny.png")
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    with pytest.raises(DatasetError, match="broken.mp4: cannot decode video"):
        load_video(broken_video, "broken.mp4", BucketSelector((64, 64)))
    whole = write_video(tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DatasetError, match="cut.mp4: no video stream found"):
        load_video(tmp_path / "cut.mp4", "cut.mp4", BucketSelector((64, 64)))
