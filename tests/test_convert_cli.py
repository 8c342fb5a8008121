"""``python -m hadakron convert / zimage-to-comfy / hv15-to-comfy``: flags, outputs, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from comfy_runtime import REPO_ROOT
from convert_helpers import FIXTURES, lokr, lora, module, write
from hadakron.cli import main


def run_main(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_all_targets_and_spellings(tmp_path, capsys):
    src = FIXTURES / "wan_lora_r4_a2.safetensors"
    out_file = tmp_path / "o.safetensors"
    code, out, _ = run_main(capsys, "convert", "--input", src, "--output", out_file, "--target", "other")
    assert code == 0 and "convert to other" in out
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in load_file(str(tmp_path / "o.safetensors"))
    code, out, _ = run_main(
        capsys, "convert", "--input", src, "--out", tmp_path / "p.safetensors", "--target", "other",
        "--diffusers-prefix", "transformer", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["operation"] == "convert to other"
    assert "transformer.blocks.0.ffn.0.lora_B.weight" in load_file(str(tmp_path / "p.safetensors"))
    code, _, _ = run_main(capsys, "convert", "--input", src, "--out", tmp_path / "c.safetensors", "--target", "comfy")
    assert code == 0 and "diffusion_model.blocks.1.ffn.2.lora_up.weight" in load_file(str(tmp_path / "c.safetensors"))


def test_convert_errors_are_one_line(tmp_path, capsys):
    src = FIXTURES / "wan_lora_r4_a2.safetensors"
    out = tmp_path / "o.safetensors"
    assert run_main(capsys, "convert", "--input", src, "--out", out, "--target", "default")[0] == 0
    code, _, err = run_main(capsys, "convert", "--input", src, "--out", out, "--target", "default")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "exists" in err
    code, _, err = run_main(capsys, "convert", "--input", src, "--out", out, "--target", "sideways")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_zimage_to_comfy_forward_and_reverse(tmp_path, capsys):
    fused = tmp_path / "fused.safetensors"
    src = FIXTURES / "zimage_lokr_r4_a2.safetensors"
    code, out, _ = run_main(capsys, "zimage-to-comfy", src, fused, "--lokr_rank", 8)
    assert code == 0 and "relative Frobenius error 0.8855" in out
    tensors = load_file(str(fused))
    assert tensors["lora_unet_layers_0_attention_qkv.lora_down.weight"].shape == (8, 256)
    lossless = tmp_path / "lossless.safetensors"
    assert run_main(capsys, "zimage-to-comfy", src, lossless, "--lossless")[0] == 0
    assert "diffusion_model.layers.0.attention.to_v.lokr_w1" in load_file(str(lossless))
    back = tmp_path / "back.safetensors"
    fused_lora = FIXTURES / "zimage_lora_r4_a2.comfy.safetensors"
    code, _, _ = run_main(capsys, "zimage-to-comfy", fused_lora, back, "--reverse")
    original = load_file(str(FIXTURES / "zimage_lora_r4_a2.safetensors"))
    restored = load_file(str(back))
    assert code == 0 and sorted(restored) == sorted(original)
    assert all(torch.equal(restored[k], original[k]) for k in original)
    code, _, err = run_main(capsys, "zimage-to-comfy", src, tmp_path / "x.safetensors", "--lokr_rank", 0)
    assert code == 2 and "lokr_rank" in err


def test_hv15_to_comfy(tmp_path, capsys):
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for part in "qkv":
        tensors.update(module(f"lora_unet_double_blocks_0_img_attn_{part}", lokr((8, 8), (16, 16), 2, gen, alpha=1.0)))
    tensors.update(module("lora_unet_double_blocks_0_img_mlp_fc1", lora(512, 128, 4, gen, alpha=4.0)))
    src = write(tmp_path / "hv.safetensors", tensors)
    code, out, _ = run_main(capsys, "hv15-to-comfy", src, tmp_path / "out.safetensors")
    assert code == 0 and "img_attn_qkv: LoRA rank" in out
    written = load_file(str(tmp_path / "out.safetensors"))
    assert "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight" in written


def test_module_entry_point(tmp_path):
    out = tmp_path / "o.safetensors"
    args = ["convert", "--input", str(FIXTURES / "wan_lokr_r4_a2.safetensors"), "--out", str(out), "--target", "other"]
    done = subprocess.run(
        [sys.executable, "-m", "hadakron", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "diffusion_model.blocks.0.ffn.0.lokr_w1" in load_file(str(out))
