"""Header-level inspection (used by the web panel's /hadakron/inspect route)."""

import pytest
import torch

from hadakron.common.errors import AdapterFileError
from hadakron.common.tensor_files import save_tensor_file
from hadakron.loading.inspect import inspect_file


def test_inspect_summarises_a_hybrid_file(tmp_path):
    tensors = {
        "lora_unet_blocks_0_self_attn_q.lokr_w1": torch.randn(8, 8),
        "lora_unet_blocks_0_self_attn_q.lokr_w2_a": torch.randn(16, 4),
        "lora_unet_blocks_0_self_attn_q.lokr_w2_b": torch.randn(4, 16),
        "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0),
        "lora_unet_blocks_0_ffn_0.lora_down.weight": torch.randn(8, 128),
        "lora_unet_blocks_0_ffn_0.lora_up.weight": torch.randn(256, 8),
        "lokr_factor": torch.tensor(-1, dtype=torch.int64),
    }
    path = save_tensor_file(
        tensors, tmp_path / "a.safetensors", {"ss_network_module": "networks.lokr", "modelspec.trigger_phrase": "sks"}
    )
    info = inspect_file(path)
    assert info["algorithms"] == {"lokr": 1, "lora": 1} and info["ranks"] == {"4": 1, "8": 1}
    assert info["alphas"] == {"2": 1} and info["lokr_factor"] == -1.0 and info["family"] == "wan"
    assert info["metadata"]["modelspec.trigger_phrase"] == "sks" and info["modules"] == 2


def test_inspect_refuses_non_safetensors(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"junk")
    with pytest.raises(AdapterFileError):
        inspect_file(tmp_path / "x.ckpt")
