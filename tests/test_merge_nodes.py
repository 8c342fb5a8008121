"""Merge Adapter into Model and Save Merged Model on a real ComfyUI 0.3.75 (in-process, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loader_helpers import patched
from test_bake import _load_node, _tiny_adapter
from tiny_models import build_tiny, write_tiny_wan_file

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def wan():
    return build_tiny("wan21", seed=5)


def _merge(comfy, mp, **slots):
    node = comfy.node_class("HadaKronMergeIntoModel")
    with torch.inference_mode():
        return node.execute(model=mp, **slots).result


def _save(comfy, mp, prefix: str) -> Path:
    with torch.inference_mode():
        return Path(comfy.node_class("HadaKronSaveMergedModel").execute(model=mp, filename_prefix=prefix).result[0])


def test_schema_has_four_slots_with_tooltips(comfy):
    schema = comfy.node_class("HadaKronMergeIntoModel").define_schema()
    ids = [i.id for i in schema.inputs]
    assert ids[0] == "model" and len(ids) == 1 + 4 * 4
    assert all(i.tooltip for i in schema.inputs)
    assert [i.optional for i in schema.inputs if i.id.startswith("adapter_")] == [False, True, True, True]
    assert schema.category == "HadaKron/merge"
    save = comfy.node_class("HadaKronSaveMergedModel").define_schema()
    assert save.is_output_node and all(i.tooltip for i in save.inputs)


def test_merge_two_adapters_equals_applying_them_one_after_another(comfy, wan):
    a = _tiny_adapter(comfy, wan, "merge_node_a.safetensors", seed=21)
    b = _tiny_adapter(comfy, wan, "merge_node_b.safetensors", seed=22)
    merged, report = _merge(
        comfy,
        wan,
        adapter_1=a,
        strength_1=0.7,
        convention_1="auto",
        block_strengths_1="0:0.5",
        adapter_2=b,
        strength_2=-0.3,
        convention_2="peft",
        adapter_3="None",
    )
    sequential = _load_node(comfy, _load_node(comfy, wan, a, 0.7, "0:0.5"), b, -0.3)
    assert wan.patches == {}, "the input model must stay unpatched"
    assert set(merged.patches) == set(sequential.patches) and len(merged.patches) == 5
    for key in merged.model.state_dict():
        torch.testing.assert_close(patched(merged, key), patched(sequential, key), rtol=1e-6, atol=1e-7)
    assert "[1] merge_node_a.safetensors (strength 0.7)" in report and "[2] merge_node_b" in report


def test_merge_node_errors_are_one_line(comfy, wan):
    with pytest.raises(Exception, match="HadaKron: .*") as info:
        _merge(comfy, wan, adapter_1="../../escape.safetensors", strength_1=1.0, convention_1="auto")
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def wan_file_model(comfy, tmp_path_factory):
    """UNETLoader-equivalent load of a detectable tiny WAN file stored in bf16."""
    import comfy.sd as comfy_sd

    path = write_tiny_wan_file(tmp_path_factory.mktemp("wanfile") / "tiny_wan.safetensors", seed=4)
    return comfy_sd.load_diffusion_model(str(path))


def _expected_file(merged) -> dict[str, torch.Tensor]:
    state = merged.model.diffusion_model.state_dict()
    return {k: patched(merged, "diffusion_model." + k).to(v.dtype) for k, v in state.items()}


def test_save_merged_model_reloads_like_the_patched_model(comfy, wan_file_model):
    import comfy.sd as comfy_sd

    a = _tiny_adapter(comfy, wan_file_model, "save_a.safetensors", seed=31)
    b = _tiny_adapter(comfy, wan_file_model, "save_b.safetensors", seed=32)
    merged, _ = _merge(comfy, wan_file_model, adapter_1=a, strength_1=1.0, convention_1="auto", adapter_2=b)
    first = _save(comfy, merged, "hk_test/merged")
    second = _save(comfy, merged, "hk_test/merged")
    out_dir = Path(comfy.folder_paths.get_output_directory()).resolve()
    assert first != second and first.parent == second.parent == out_dir / "hk_test"
    assert first.name.startswith("merged_") and first.suffix == ".safetensors"
    saved, expected = load_file(str(first)), _expected_file(merged)
    assert set(saved) == set(expected)
    for key, value in expected.items():
        assert saved[key].dtype == value.dtype and torch.equal(saved[key], value), key
    reloaded = comfy_sd.load_diffusion_model(str(first))
    for key, value in reloaded.model.diffusion_model.state_dict().items():
        torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=0, atol=0)


def test_save_reads_original_weights_while_a_clone_is_loaded_patched(comfy, wan_file_model):
    import comfy.model_management as mm

    a = _tiny_adapter(comfy, wan_file_model, "loaded_a.safetensors", seed=41)
    b = _tiny_adapter(comfy, wan_file_model, "loaded_b.safetensors", seed=42)
    merged, _ = _merge(comfy, wan_file_model, adapter_1=a)
    other, _ = _merge(comfy, wan_file_model, adapter_1=b, strength_1=2.0)
    expected = _expected_file(merged)
    mm.load_models_gpu([other], force_patch_weights=True)
    try:
        assert other.backup, "the other clone should be patched in place"
        saved = load_file(str(_save(comfy, merged, "hk_test/while_loaded")))
    finally:
        mm.unload_all_models()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key


def test_save_bakes_bypass_mode_adapters(comfy, wan):
    name = _tiny_adapter(comfy, wan, "bypass_save.safetensors", seed=51)
    node = comfy.node_class("HadaKronLoadAdapter")
    with torch.inference_mode():
        bypassed = node.execute(
            model=wan, adapter_name=name, strength_model=0.9, convention="auto", apply_mode="bypass"
        ).result[0]
    assert not bypassed.patches
    saved = load_file(str(_save(comfy, bypassed, "hk_test/bypass")))
    reference = _load_node(comfy, wan, name, 0.9)
    for key, value in saved.items():
        torch.testing.assert_close(value, patched(reference, "diffusion_model." + key), rtol=1e-5, atol=1e-6)
