"""Dataset building inside real ComfyUI 0.3.75 (CPU): the tiny WAN 2.1 VAE, a tiny real CLIP, caching,
control images, musubi caches and the node itself (path guard, summary)."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import pytest
import torch

from hadakron.common.errors import DatasetError
from hadakron.common.tensor_files import save_tensor_file
from hadakron.training.dataset import (
    BuildOptions,
    DatasetSpec,
    MediaEntry,
    Problems,
    VaeEncoder,
    build_dataset,
    specs_for_source,
)
from hadakron.training.dataset.build import _entry_key
from hadakron.training.dataset.musubi_cache import MusubiCacheReader
from test_dataset_engine import write_image, write_video
from tiny_models import fill_deterministic, write_tiny_wan_vae

pytestmark = pytest.mark.comfy

TINY_CLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}


@pytest.fixture(scope="module")
def vae(comfy, tmp_path_factory):
    path = write_tiny_wan_vae(tmp_path_factory.mktemp("vae") / "tiny_wan21_vae.safetensors")
    return comfy.comfy.sd.VAE(sd=comfy.comfy.utils.load_torch_file(str(path)))


@pytest.fixture(scope="module")
def clip(comfy):
    """A real ComfyUI CLIP (SD1 tokenizer + CLIP-L text model shrunk to width 32), seeded weights."""
    sd1 = comfy.comfy.sd1_clip
    target = comfy.comfy.supported_models_base.ClipTarget(sd1.SD1Tokenizer, sd1.SD1ClipModel)
    target.params = {"clip_model": functools.partial(sd1.SDClipModel, textmodel_json_config=dict(TINY_CLIP_CONFIG))}
    model = comfy.comfy.sd.CLIP(target=target)
    fill_deterministic(model.cond_stage_model, seed=0)
    return model


def make_folder(root: Path, video: bool = True) -> Path:
    """Images of three aspect ratios (one in a kohya repeat folder), captions, a video and a broken file."""
    data = root / "set"
    write_image(data / "square.png", (32, 32), value=10)
    (data / "square.txt").write_text("a square")
    write_image(data / "wide.jpg", (96, 24), value=90, fmt="JPEG")  # no caption
    write_image(data / "2_tall" / "tall.webp", (40, 100), value=200, fmt="WEBP")
    (data / "2_tall" / "tall.txt").write_text("a tall thing")
    if video:
        write_video(data / "clip.mp4", frames=9, size=(32, 24))
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return data


def build(data: Path, root: Path, vae, clip=None, cache: Path | None = None, musubi=None, **spec_kw):
    spec_kw = {"resolution": (32, 32), "enable_bucket": True, "default_caption": "a photo", **spec_kw}
    problems = Problems()
    specs = specs_for_source(data, root, [root], DatasetSpec(**spec_kw), problems)
    options = BuildOptions(roots=[root], base=root, cache_root=cache, musubi=musubi, label=data.name)
    return build_dataset(specs, vae, clip, options, problems)


@pytest.fixture(scope="module")
def built(vae, clip, tmp_path_factory):
    """One folder built with the VAE and CLIP into a disk cache: ``(root, data, cache, dataset)``."""
    base = tmp_path_factory.mktemp("built")
    root, cache = base / "input", base / "output" / "hadakron_cache"
    data = make_folder(root)
    return root, data, cache, build(data, root, vae, clip, cache, trigger_word="sks")


def by_source(dataset) -> dict:
    return {item.source: item for item in dataset.items}


def test_buckets_latents_captions_and_skipped(built):
    _, _, _, dataset = built
    items = by_source(dataset)
    assert sorted(items) == ["set/2_tall/tall.webp", "set/clip.mp4[0:1]", "set/square.png", "set/wide.jpg"]
    assert tuple(items["set/square.png"].latent.shape) == (16, 1, 4, 4)  # bucket 32x32
    assert tuple(items["set/wide.jpg"].latent.shape) == (16, 1, 2, 8)  # bucket 64x16
    assert tuple(items["set/2_tall/tall.webp"].latent.shape) == (16, 1, 8, 2)  # bucket 16x64
    assert tuple(items["set/clip.mp4[0:1]"].latent.shape) == (16, 1, 4, 4)  # target_frames 1: first frame
    assert items["set/2_tall/tall.webp"].repeats == 2 and items["set/square.png"].repeats == 1
    assert items["set/wide.jpg"].caption == "sks, a photo" and items["set/square.png"].caption == "sks, a square"
    assert all(not i.latent.is_inference() and i.latent.dtype == torch.float32 for i in dataset.items)
    assert [name for name, _ in dataset.skipped] == ["set/broken.png"]
    assert "readable image" in dataset.skipped[0][1] or "cannot decode" in dataset.skipped[0][1]
    assert dataset.cache_stats["encoded"] == 4 and dataset.cache_stats["cached"] == 0
    summary = dataset.summary()
    assert "bucket 16x1x4x4: 2" in summary and "set/broken.png" in summary and "cache: cached 0, encoded 4" in summary


def test_clip_conditioning_dropout_and_variants(built, clip):
    _, _, _, dataset = built
    item = by_source(dataset)["set/square.png"]
    cond, extras = item.conditioning[0]
    assert tuple(cond.shape) == (1, 77, 32) and not cond.is_inference() and "pooled_output" in extras
    assert torch.allclose(cond, clip.encode_from_tokens_scheduled(clip.tokenize("sks, a square"))[0][0])
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))[0][0]
    assert torch.allclose(dataset.empty_conditioning[0][0], empty)
    variant = dataset.encode_caption("a square, sks")
    assert tuple(variant[0][0].shape) == (1, 77, 32) and dataset.encode_caption("a square, sks") is variant
    assert dataset.cache_stats["text_encoded"] == 4  # "", and three distinct captions


def test_cache_second_run_encodes_nothing_and_an_edit_reencodes_one(built, vae, clip):
    root, data, cache, first = built
    second = build(data, root, vae, clip, cache, trigger_word="sks")
    assert second.cache_stats["encoded"] == 0 and second.cache_stats["cached"] == 4
    assert second.cache_stats["text_encoded"] == 0 and second.cache_stats["text_cached"] == 4
    for a, b in zip(first.items, second.items, strict=True):
        assert a.source == b.source and torch.equal(a.latent, b.latent)
        assert torch.equal(a.conditioning[0][0], b.conditioning[0][0])
    write_image(data / "square.png", (32, 32), value=250)
    (data / "2_tall" / "tall.txt").write_text("an edited caption")
    third = build(data, root, vae, clip, cache, trigger_word="sks")
    assert third.cache_stats["encoded"] == 1 and third.cache_stats["cached"] == 3
    assert third.cache_stats["text_encoded"] == 1
    assert not torch.equal(by_source(third)["set/square.png"].latent, by_source(first)["set/square.png"].latent)


def test_cache_key_covers_vae_and_settings(built, vae, comfy):
    root, data, _, _ = built
    spec = specs_for_source(data, root, [root], DatasetSpec(resolution=(32, 32)), Problems())[0]
    entry = MediaEntry(data / "wide.jpg", "set/wide.jpg", "image", "", 1, spec)
    encoder = VaeEncoder(vae)
    key = _entry_key(entry, encoder)
    assert key == _entry_key(entry, VaeEncoder(vae))
    entry.spec = dataclasses.replace(spec, resolution=(32, 16))
    assert _entry_key(entry, encoder) != key
    entry.spec = spec
    path = write_tiny_wan_vae(root.parent / "other_vae.safetensors", seed=1)
    other = comfy.comfy.sd.VAE(sd=comfy.comfy.utils.load_torch_file(str(path)))
    assert _entry_key(entry, VaeEncoder(other)) != key


def test_video_clip_encoded_with_fps_drop(vae, tmp_path):
    root = tmp_path / "input"
    write_video(root / "v" / "clip.gif", frames=9, size=(32, 24))
    dataset = build(root / "v", root, vae, target_frames=(5, 6), source_fps=8.0, target_fps=4.0)
    (item,) = dataset.items  # 8 -> 4 fps keeps 5 of 9 frames: one 5-frame clip; 6 is rounded to 5 (4N+1)
    assert item.source == "v/clip.gif[0:5]" and item.frames == 5 and item.media == "video"
    assert tuple(item.latent.shape) == (16, 2, 4, 4) and item.pixel_size == (32, 32)
    assert any("not 4N+1" in message for _, message in dataset.notes)
    assert "video clips 1 (5 frames: 1)" in dataset.summary()


def test_control_images_encoded_with_the_same_vae(vae, tmp_path):
    root = tmp_path / "input"
    data = root / "edit"
    write_image(data / "t.png", (96, 24))
    write_image(data / "control" / "t.png", (32, 32), value=30)
    (item,) = build(data, root, vae).items
    assert tuple(item.latent.shape) == (16, 1, 2, 8)
    assert len(item.control_latents) == 1 and item.control_latents[0].shape == item.latent.shape


def test_empty_folder_and_all_broken(vae, tmp_path):
    root = tmp_path / "input"
    (root / "empty").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty: no images or videos found"):
        build(root / "empty", root, vae)
    (root / "bad").mkdir()
    (root / "bad" / "x.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="no usable items") as info:
        build(root / "bad", root, vae)
    assert "bad/x.png" in str(info.value)


def test_musubi_cache_reused_where_it_fits(comfy, vae, tmp_path):
    root = tmp_path / "input"
    data = root / "m"
    write_image(data / "img.png", (32, 32))
    write_image(data / "other.png", (32, 32))
    with torch.inference_mode():
        raw = vae.encode(torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0)))[0].clone()
    normalised = comfy.comfy.latent_formats.Wan21().process_in(raw.unsqueeze(0))[0]
    save_tensor_file({"latents_1x4x4_float32": normalised}, data / "img_0032x0032_wan.safetensors")
    save_tensor_file({"varlen_t5_float32": torch.randn(7, 4096)}, data / "img_wan_te.safetensors")
    save_tensor_file({"latents_1x4x4_float32": torch.zeros(4, 1, 4, 4)}, data / "other_0032x0032_wan.safetensors")

    def denormalize(name, latent):
        return getattr(comfy.comfy.latent_formats, name)().process_out(latent)

    reader = MusubiCacheReader(denormalize, vae.latent_channels, 4)
    dataset = build(data, root, vae, musubi=reader)
    assert dataset.cache_stats["musubi"] == 1 and dataset.cache_stats["encoded"] == 1
    items = by_source(dataset)
    assert torch.allclose(items["m/img.png"].latent, raw, atol=1e-5)
    assert tuple(items["m/img.png"].conditioning[0][0].shape) == (1, 7, 4096)
    assert any("does not fit this VAE" in msg for name, msg in dataset.notes if name == "m/other.png")


# --- the node, in-process -----------------------------------------------------------------------


def run_node(comfy, vae, folder: str, **kw):
    node = comfy.node_class("HadaKronDatasetFromFolder")
    args = {"width": 32, "height": 32, "enable_bucket": True, "target_frames": "1", **kw}
    return node.execute(folder=folder, vae=vae, **args)


def test_node_builds_caches_and_shows_summary(comfy, vae):
    input_dir = Path(comfy.folder_paths.get_input_directory())
    data = input_dir / "hk_node" / "set"
    write_image(data / "square.png", (32, 32))
    (data / "broken.png").write_bytes(b"broken")
    try:
        out = run_node(comfy, vae, "hk_node/set", default_caption="x")
        dataset, summary = out.result
        assert len(dataset.items) == 1 and summary == dataset.summary()
        assert out.ui["text"] == [summary] and "hk_node/set/broken.png" in summary
        cache_dir = Path(comfy.folder_paths.get_output_directory()) / "hadakron_cache" / "latents"
        assert len(list(cache_dir.rglob("*.safetensors"))) >= 1
        again = run_node(comfy, vae, "hk_node/set", default_caption="x").result[0]
        assert again.cache_stats["encoded"] == 0
        node = comfy.node_class("HadaKronDatasetFromFolder")
        assert node.fingerprint_inputs(folder="hk_node/set") == node.fingerprint_inputs(folder="hk_node/set")
    finally:
        shutil.rmtree(input_dir / "hk_node")


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("../outside", "'..' is not allowed"),
        ("/etc", "absolute paths are not allowed"),
        ("hk_link_out", "outside the allowed folders"),
        ("hk_missing", "not found"),
        ("hk_empty", "no images or videos found"),
    ],
)
def test_node_refuses_bad_folders(comfy, vae, tmp_path, folder, message):
    input_dir = Path(comfy.folder_paths.get_input_directory())
    (input_dir / "hk_empty").mkdir(exist_ok=True)
    link = input_dir / "hk_link_out"
    if not link.is_symlink():
        link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(Exception, match=message) as info:
        run_node(comfy, vae, folder)
    assert type(info.value).__name__ == "HadaKronNodeError"


def test_native_lists_node(comfy):
    node = comfy.node_class("HadaKronDatasetFromLatents")
    with torch.inference_mode():
        latents = [{"samples": torch.randn(2, 16, 1, 4, 4)}, {"samples": torch.randn(1, 16, 1, 8, 4)}]
        conditioning = [[[torch.randn(1, 5, 32), {"pooled_output": torch.randn(1, 32)}]]]
        dataset, summary = node.execute(latents=latents, conditioning=conditioning).result
    assert len(dataset.items) == 3 and "bucket 16x1x4x4: 2" in summary
    assert all(not i.latent.is_inference() and not i.conditioning[0][0].is_inference() for i in dataset.items)
    with pytest.raises(Exception, match="need 1 or one each"):
        node.execute(latents=latents, conditioning=conditioning * 3)
