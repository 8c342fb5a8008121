"""Module-name tables: recover dotted module paths from ``lora_unet_`` names, and map them to ComfyUI's names.

``lora_unet_`` names replace every ``.`` with ``_`` and cannot be inverted by string rules (module
names contain ``_``). Each family therefore has a table of module-path *templates* (``{N}`` is a
block index):

* **comfy** templates come from ComfyUI's own model classes (``tables/comfy_modules.json``, written
  by ``scripts/gen_convert_tables.py`` on the meta device at the real sizes);
* **trainer** templates are the names trainers write where they differ from ComfyUI's
  (musubi-tuner / official / diffusers names; architectures.md §3-§6), written by hand below.

A name is recovered by a full match of its underscore form against the templates (trainer names
first, so a file keeps its own naming). Renames to ComfyUI's names use the loader's rule tables
(:data:`hadakron.keymap.families.RULES`).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..keymap.families import FAMILIES, rules_for
from ..keymap.resolver import normalise

TABLE_FILE = Path(__file__).resolve().parent / "tables" / "comfy_modules.json"
_Z_BLOCKS = ("layers", "noise_refiner", "context_refiner")


def _each(blocks: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{block}.{{N}}.{name}" for block in blocks for name in names)


def _both(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.format(s=stream) for stream in ("img", "txt") for name in names)


_HV_DOUBLE = _both(("{s}_attn_qkv", "{s}_attn_proj", "{s}_mlp.fc1", "{s}_mlp.fc2", "{s}_mod.linear"))
_HV15_DOUBLE = _both(
    ("{s}_attn_q", "{s}_attn_k", "{s}_attn_v", "{s}_attn_proj", "{s}_mlp.fc1", "{s}_mlp.fc2", "{s}_mod.linear")
)
_FRAMEPACK_DOUBLE = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
    "norm1_context.linear",
)  # fmt: skip
_FRAMEPACK_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear")
_K5_ATTN = ("to_query", "to_key", "to_value", "out_layer")
_K5_BLOCK = (
    *(f"self_attention.{n}" for n in _K5_ATTN),
    *(f"cross_attention.{n}" for n in _K5_ATTN),
    "feed_forward.in_layer",
    "feed_forward.out_layer",
    "visual_modulation.out_layer",
    "text_modulation.out_layer",
)

# Names trainers write that ComfyUI's model does not use (dotted, ``{N}`` = block index).
TRAINER_TEMPLATES: dict[str, tuple[str, ...]] = {
    "z_image": (
        *_each(_Z_BLOCKS, ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")),
        *_each(_Z_BLOCKS, ("attention.norm_q", "attention.norm_k")),
        "all_x_embedder.2-1",
        "all_final_layer.2-1.linear",
        "all_final_layer.2-1.adaLN_modulation.1",
    ),
    "hunyuan_video": (
        *_each(("double_blocks",), _HV_DOUBLE),
        *_each(("single_blocks",), ("linear1", "linear2", "modulation.linear")),
    ),
    "hunyuan_video_1_5": _each(("double_blocks",), _HV15_DOUBLE),
    "framepack": (
        *_each(("transformer_blocks",), _FRAMEPACK_DOUBLE),
        *_each(("single_transformer_blocks",), _FRAMEPACK_SINGLE),
        "proj_out",
        "norm_out.linear",
    ),
    "kandinsky5": _each(("visual_transformer_blocks", "text_transformer_blocks"), _K5_BLOCK),
}

# Families whose ComfyUI model has these split q/k/v names mapped natively onto qkv row slices
# (comfy/lora.py::model_lora_keys_unet; architectures.md §2): prefix to write them under.
NATIVE_SLICE_PREFIX: dict[str, str] = {"z_image": "diffusion_model."}


@dataclass(frozen=True)
class Template:
    """One module-path template and the regex that recognises its underscore form."""

    dotted: str
    naming: str  # "trainer" | "comfy"
    regex: re.Pattern

    def fill(self, match: re.Match) -> str:
        """The dotted name with the matched block indices filled in."""
        out = self.dotted
        for index in match.groups():
            out = out.replace("{N}", index, 1)
        return out


def _compile(dotted: str, naming: str) -> Template:
    pieces = normalise(dotted).split("{N}")
    return Template(dotted, naming, re.compile(r"(\d+)".join(re.escape(p) for p in pieces)))


@functools.lru_cache(maxsize=1)
def comfy_table() -> dict:
    """The generated ComfyUI module table (``{"families": {family: {"modules": {template: shape}}}}``)."""
    return json.loads(TABLE_FILE.read_text(encoding="utf-8"))


def comfy_templates(family: str) -> dict[str, list[int]]:
    """``{template: real-size shape}`` of ComfyUI's modules for ``family`` (empty when ComfyUI lacks it)."""
    return comfy_table()["families"].get(family, {}).get("modules", {})


@dataclass(frozen=True)
class Recovered:
    """A dotted module path recovered from a table."""

    dotted: str
    naming: str
    family: str


class NameTable:
    """Template lookup for one family (or every family when ``family`` is ``None``)."""

    def __init__(self, family: str | None):
        self.family = family
        families = [family] if family else list(FAMILIES)
        self.templates: list[tuple[str, Template]] = []
        for naming in ("trainer", "comfy"):
            for fam in families:
                source = TRAINER_TEMPLATES.get(fam, ()) if naming == "trainer" else comfy_templates(fam)
                self.templates += [(fam, _compile(t, naming)) for t in source]

    def recover(self, norm: str, naming: str | None = None) -> Recovered | None:
        """Dotted path for an underscore-normalised module name (prefix removed), or ``None``."""
        for fam, template in self.templates:
            if naming is not None and template.naming != naming:
                continue
            match = template.regex.fullmatch(norm)
            if match:
                return Recovered(template.fill(match), template.naming, fam)
        return None

    def comfy_name(self, norm: str) -> tuple[str | None, bool]:
        """``(ComfyUI dotted path, sliced)`` for a module: a rename rule first, else the name itself.

        ``sliced`` is true when the module is one part of a fused ComfyUI weight (split q/k/v).
        """
        for rule in rules_for(self.family):
            mapped = rule.apply(norm)
            if mapped is None:
                continue
            found = self.recover(mapped, naming="comfy")
            if found is not None:
                return found.dotted, rule.slice_fn is not None
        found = self.recover(norm, naming="comfy")
        return (found.dotted if found else None), False


def model_shapes(family: str, blocks: int | None = None, prefix: str = "diffusion_model.") -> dict[str, tuple]:
    """A ``{parameter key: shape}`` dict of ComfyUI's ``family`` model at real sizes (no weights).

    Args:
        family: a family in the generated table.
        blocks: how many blocks per block list (default: the real count).
        prefix: key prefix (``diffusion_model.`` as in ComfyUI's state dicts).
    """
    table = comfy_table()["families"][family]
    shapes: dict[str, tuple] = {}
    raw = set(table.get("raw", ()))
    for template, shape in table["modules"].items():
        suffix = "" if template in raw else ".weight"
        if "{N}" not in template:
            shapes[f"{prefix}{template}{suffix}"] = tuple(shape)
            continue
        block_list = template.split(".{N}.")[0]
        count = blocks if blocks is not None else table["block_counts"].get(block_list, 1)
        for index in range(count):
            shapes[f"{prefix}{template.replace('{N}', str(index), 1)}{suffix}"] = tuple(shape)
    return shapes
