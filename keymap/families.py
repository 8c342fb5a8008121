"""Model families: detection from key names and rename rules to ComfyUI's module names.

Rename rules work on *underscore-normalised* module names (``.`` -> ``_``), which makes
``lora_unet_`` names, dotted names and converter-mangled names (``img_attn_qkv``) equivalent.
Each rule maps a source pattern to a ComfyUI module and, for split q/k/v onto a fused weight,
a row slice computed from the target weight's shape (architectures.md §3-§6).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FAMILIES = (
    "wan",
    "hunyuan_video",
    "hunyuan_video_1_5",
    "framepack",
    "flux",
    "flux2",
    "qwen_image",
    "z_image",
    "kandinsky5",
)

# (family, required patterns on dotted model keys); first full match wins (most specific first).
_MODEL_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("flux2", (r"double_stream_modulation_img\.lin\.weight",)),
    ("hunyuan_video_1_5", (r"double_blocks\.\d+\.img_attn\.qkv\.weight", r"vision_in\.")),
    ("hunyuan_video", (r"double_blocks\.\d+\.img_attn\.qkv\.weight", r"txt_in\.")),
    ("flux", (r"double_blocks\.\d+\.img_attn\.qkv\.weight",)),
    ("wan", (r"blocks\.\d+\.self_attn\.q\.weight", r"blocks\.\d+\.ffn\.0\.weight")),
    ("qwen_image", (r"transformer_blocks\.\d+\.img_mod\.1\.weight",)),
    ("z_image", (r"layers\.\d+\.attention\.qkv\.weight", r"layers\.\d+\.feed_forward\.w1\.weight")),
    ("kandinsky5", (r"visual_transformer_blocks\.\d+\.",)),
    ("framepack", (r"single_transformer_blocks\.\d+\.attn\.to_q\.weight", r"transformer_blocks\.\d+\.attn\.add_q")),
)

# Patterns on underscore-normalised adapter module names (prefix stripped).
_ADAPTER_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("flux2", r"double_stream_modulation|single_stream_modulation"),
    ("hunyuan_video_1_5", r"double_blocks_\d+_(img|txt)_attn_[qkv]$"),
    ("hunyuan_video", r"double_blocks_\d+_img_mlp_fc[12]|double_blocks_\d+_img_mod_linear"),
    ("flux", r"double_blocks_\d+_img_attn_qkv|single_blocks_\d+_linear[12]"),
    ("wan", r"blocks_\d+_(self_attn|cross_attn)_[qkvo]$|blocks_\d+_attn[12]_to_|blocks_\d+_ffn_(0|2|net)"),
    ("qwen_image", r"transformer_blocks_\d+_(img|txt)_mlp_net|transformer_blocks_\d+_(img|txt)_mod_1"),
    ("z_image", r"layers_\d+_(attention_to_[qkv]|attention_qkv|feed_forward_w[123]|attention_to_out_0)"),
    ("kandinsky5", r"visual_transformer_blocks_\d+"),
    ("framepack", r"single_transformer_blocks_\d+_(attn_to_[qkv]|proj_mlp|proj_out)"),
)


def detect_family_from_model_keys(keys: Iterable[str]) -> str | None:
    """Family of a diffusion model from its state-dict key names (any prefix), or ``None``."""
    text = "\n".join(keys)
    for family, patterns in _MODEL_SIGNATURES:
        if all(re.search(p, text) for p in patterns):
            return family
    return None


def detect_family_from_adapter(normalised_modules: Iterable[str]) -> str | None:
    """Family an adapter was trained for, from its underscore-normalised module names."""
    names = list(normalised_modules)
    for family, pattern in _ADAPTER_SIGNATURES:
        rx = re.compile(pattern)
        if any(rx.search(n) for n in names):
            return family
    return None


SliceFn = Callable[[tuple[int, ...]], tuple[int, int]]


def _thirds(part: int) -> SliceFn:
    def rows(shape: tuple[int, ...]) -> tuple[int, int]:
        third = shape[0] // 3
        return part * third, third

    return rows


def _hidden_slice(start_h: int, length_h: int | None) -> SliceFn:
    """Slice measured in multiples of the hidden size (= the weight's input width)."""

    def rows(shape: tuple[int, ...]) -> tuple[int, int]:
        h = shape[1]
        return start_h * h, (length_h * h if length_h is not None else shape[0] - start_h * h)

    return rows


@dataclass(frozen=True)
class RenameRule:
    """``pattern`` (regex on normalised names) -> ComfyUI module ``template`` (+ optional row slice)."""

    pattern: str
    template: str
    slice_fn: SliceFn | None = None

    def apply(self, name: str) -> str | None:
        match = re.fullmatch(self.pattern, name)
        return match.expand(self.template) if match else None


_Q, _K, _V = _thirds(0), _thirds(1), _thirds(2)
_BLOCKS = r"(layers|noise_refiner|context_refiner)_(\d+)"

RULES: dict[str, tuple[RenameRule, ...]] = {
    "z_image": (
        RenameRule(_BLOCKS + r"_attention_to_q", r"\1_\2_attention_qkv", _Q),
        RenameRule(_BLOCKS + r"_attention_to_k", r"\1_\2_attention_qkv", _K),
        RenameRule(_BLOCKS + r"_attention_to_v", r"\1_\2_attention_qkv", _V),
        RenameRule(_BLOCKS + r"_attention_to_out_0", r"\1_\2_attention_out"),
        RenameRule(_BLOCKS + r"_attention_norm_q", r"\1_\2_attention_q_norm"),
        RenameRule(_BLOCKS + r"_attention_norm_k", r"\1_\2_attention_k_norm"),
        RenameRule(r"all_x_embedder_2_1", r"x_embedder"),
        RenameRule(r"all_final_layer_2_1_(linear|adaLN_modulation_1)", r"final_layer_\1"),
    ),
    "wan": (
        RenameRule(r"blocks_(\d+)_attn1_to_([qkv])", r"blocks_\1_self_attn_\2"),
        RenameRule(r"blocks_(\d+)_attn1_to_out_0", r"blocks_\1_self_attn_o"),
        RenameRule(r"blocks_(\d+)_attn1_norm_([qk])", r"blocks_\1_self_attn_norm_\2"),
        RenameRule(r"blocks_(\d+)_attn2_to_([qkv])", r"blocks_\1_cross_attn_\2"),
        RenameRule(r"blocks_(\d+)_attn2_to_out_0", r"blocks_\1_cross_attn_o"),
        RenameRule(r"blocks_(\d+)_attn2_add_k_proj", r"blocks_\1_cross_attn_k_img"),
        RenameRule(r"blocks_(\d+)_attn2_add_v_proj", r"blocks_\1_cross_attn_v_img"),
        RenameRule(r"blocks_(\d+)_ffn_net_0_proj", r"blocks_\1_ffn_0"),
        RenameRule(r"blocks_(\d+)_ffn_net_2", r"blocks_\1_ffn_2"),
        RenameRule(r"proj_out", r"head_head"),
        RenameRule(r"condition_embedder_text_embedder_linear_1", r"text_embedding_0"),
        RenameRule(r"condition_embedder_text_embedder_linear_2", r"text_embedding_2"),
        RenameRule(r"condition_embedder_time_embedder_linear_1", r"time_embedding_0"),
        RenameRule(r"condition_embedder_time_embedder_linear_2", r"time_embedding_2"),
        RenameRule(r"condition_embedder_time_proj", r"time_projection_1"),
    ),
    "hunyuan_video": (
        RenameRule(r"double_blocks_(\d+)_(img|txt)_mlp_fc1", r"double_blocks_\1_\2_mlp_0"),
        RenameRule(r"double_blocks_(\d+)_(img|txt)_mlp_fc2", r"double_blocks_\1_\2_mlp_2"),
        RenameRule(r"double_blocks_(\d+)_(img|txt)_mod_linear", r"double_blocks_\1_\2_mod_lin"),
        RenameRule(r"single_blocks_(\d+)_modulation_linear", r"single_blocks_\1_modulation_lin"),
    ),
    "flux": (
        RenameRule(r"transformer_blocks_(\d+)_attn_to_q", r"double_blocks_\1_img_attn_qkv", _Q),
        RenameRule(r"transformer_blocks_(\d+)_attn_to_k", r"double_blocks_\1_img_attn_qkv", _K),
        RenameRule(r"transformer_blocks_(\d+)_attn_to_v", r"double_blocks_\1_img_attn_qkv", _V),
        RenameRule(r"transformer_blocks_(\d+)_attn_add_q_proj", r"double_blocks_\1_txt_attn_qkv", _Q),
        RenameRule(r"transformer_blocks_(\d+)_attn_add_k_proj", r"double_blocks_\1_txt_attn_qkv", _K),
        RenameRule(r"transformer_blocks_(\d+)_attn_add_v_proj", r"double_blocks_\1_txt_attn_qkv", _V),
        RenameRule(r"transformer_blocks_(\d+)_attn_to_out_0", r"double_blocks_\1_img_attn_proj"),
        RenameRule(r"transformer_blocks_(\d+)_attn_to_add_out", r"double_blocks_\1_txt_attn_proj"),
        RenameRule(r"transformer_blocks_(\d+)_ff_net_0_proj", r"double_blocks_\1_img_mlp_0"),
        RenameRule(r"transformer_blocks_(\d+)_ff_net_2", r"double_blocks_\1_img_mlp_2"),
        RenameRule(r"transformer_blocks_(\d+)_ff_context_net_0_proj", r"double_blocks_\1_txt_mlp_0"),
        RenameRule(r"transformer_blocks_(\d+)_ff_context_net_2", r"double_blocks_\1_txt_mlp_2"),
        RenameRule(r"transformer_blocks_(\d+)_norm1_linear", r"double_blocks_\1_img_mod_lin"),
        RenameRule(r"transformer_blocks_(\d+)_norm1_context_linear", r"double_blocks_\1_txt_mod_lin"),
        RenameRule(r"single_transformer_blocks_(\d+)_attn_to_q", r"single_blocks_\1_linear1", _hidden_slice(0, 1)),
        RenameRule(r"single_transformer_blocks_(\d+)_attn_to_k", r"single_blocks_\1_linear1", _hidden_slice(1, 1)),
        RenameRule(r"single_transformer_blocks_(\d+)_attn_to_v", r"single_blocks_\1_linear1", _hidden_slice(2, 1)),
        RenameRule(r"single_transformer_blocks_(\d+)_proj_mlp", r"single_blocks_\1_linear1", _hidden_slice(3, None)),
        RenameRule(r"single_transformer_blocks_(\d+)_proj_out", r"single_blocks_\1_linear2"),
        RenameRule(r"single_transformer_blocks_(\d+)_norm_linear", r"single_blocks_\1_modulation_lin"),
        RenameRule(r"single_blocks_(\d+)_linear1_qkv", r"single_blocks_\1_linear1", _hidden_slice(0, 3)),
    ),
    "hunyuan_video_1_5": (
        RenameRule(r"double_blocks_(\d+)_(img|txt)_attn_q", r"double_blocks_\1_\2_attn_qkv", _Q),
        RenameRule(r"double_blocks_(\d+)_(img|txt)_attn_k", r"double_blocks_\1_\2_attn_qkv", _K),
        RenameRule(r"double_blocks_(\d+)_(img|txt)_attn_v", r"double_blocks_\1_\2_attn_qkv", _V),
    ),
}
# Shared tables: HV 1.5 uses HV's musubi renames; FLUX.2 and HunyuanVideo use FLUX's diffusers names.
RULES["hunyuan_video_1_5"] = RULES["hunyuan_video_1_5"] + RULES["hunyuan_video"]
RULES["hunyuan_video"] = RULES["hunyuan_video"] + RULES["flux"]
RULES["flux2"] = RULES["flux"]


def rules_for(family: str | None) -> tuple[RenameRule, ...]:
    """Rename rules of ``family``; for an unknown family every table is tried (generic mapping)."""
    if family in RULES:
        return RULES[family]
    return tuple(rule for rules in RULES.values() for rule in rules)
