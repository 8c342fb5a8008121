"""KeyResolver: direct names, lazy ComfyUI key map, RMSNorm spellings across ComfyUI versions."""

from hadakron.keymap import KeyResolver

SHAPES_0_3 = {
    "diffusion_model.double_blocks.0.img_attn.qkv.weight": (48, 16),
    "diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale": (8,),
}
SHAPES_0_33 = {
    "diffusion_model.double_blocks.0.img_attn.qkv.weight": (48, 16),
    "diffusion_model.double_blocks.0.img_attn.norm.query_norm.weight": (8,),
}


def test_direct_names_never_build_the_alias_map():
    calls = []

    def aliases():
        calls.append(1)
        return {"transformer.x": "diffusion_model.double_blocks.0.img_attn.qkv.weight"}

    resolver = KeyResolver(SHAPES_0_3, family="flux", aliases=aliases)
    target = resolver.resolve("lora_unet_double_blocks_0_img_attn_qkv")
    assert target.key == "diffusion_model.double_blocks.0.img_attn.qkv.weight" and target.via == "direct"
    assert calls == []
    assert resolver.resolve("transformer.x").via == "alias" and calls == [1]
    resolver.resolve("transformer.x")
    assert calls == [1]


def test_rmsnorm_scale_and_weight_find_each_other():
    old, new = KeyResolver(SHAPES_0_3, family="flux"), KeyResolver(SHAPES_0_33, family="flux")
    for name in (
        "diffusion_model.double_blocks.0.img_attn.norm.query_norm",
        "diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale",
        "diffusion_model.double_blocks.0.img_attn.norm.query_norm.weight",
    ):
        assert old.resolve(name).key == "diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale", name
        assert new.resolve(name).key == "diffusion_model.double_blocks.0.img_attn.norm.query_norm.weight", name
