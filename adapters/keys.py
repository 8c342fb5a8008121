"""Key anatomy: ``<prefix><module><role suffix>`` (formats.md §1) split into module, family, role."""

from __future__ import annotations

# (suffix, family, role); matched longest first. Families: lora, loha, lokr, full, common.
ROLE_SUFFIXES: tuple[tuple[str, str, str], ...] = (
    (".lora_linear_layer.up.weight", "lora", "up"),
    (".lora_linear_layer.down.weight", "lora", "down"),
    (".lora_B.default.weight", "lora", "up"),
    (".lora_A.default.weight", "lora", "down"),
    (".lora_up.weight", "lora", "up"),
    (".lora_down.weight", "lora", "down"),
    (".lora_mid.weight", "lora", "mid"),
    (".lora_B.weight", "lora", "up"),
    (".lora_A.weight", "lora", "down"),
    ("_lora.up.weight", "lora", "up"),
    ("_lora.down.weight", "lora", "down"),
    (".lora.up.weight", "lora", "up"),
    (".lora.down.weight", "lora", "down"),
    (".lora_B", "lora", "up"),
    (".lora_A", "lora", "down"),
    (".hada_w1_a", "loha", "w1a"),
    (".hada_w1_b", "loha", "w1b"),
    (".hada_w2_a", "loha", "w2a"),
    (".hada_w2_b", "loha", "w2b"),
    (".hada_t1", "loha", "t1"),
    (".hada_t2", "loha", "t2"),
    (".lokr_w1_a", "lokr", "w1a"),
    (".lokr_w1_b", "lokr", "w1b"),
    (".lokr_w1", "lokr", "w1"),
    (".lokr_w2_a", "lokr", "w2a"),
    (".lokr_w2_b", "lokr", "w2b"),
    (".lokr_w2", "lokr", "w2"),
    (".lokr_t2", "lokr", "t2"),
    (".diff_b", "full", "diff_b"),
    (".diff", "full", "diff"),
    (".set_weight", "full", "set"),
    (".w_norm", "full", "w_norm"),
    (".b_norm", "full", "b_norm"),
    (".alpha", "common", "alpha"),
    (".dora_scale", "common", "dora_scale"),
    (".lora_magnitude_vector.weight", "common", "magnitude"),
    (".lora_magnitude_vector", "common", "magnitude"),
    (".dora_layer.weight", "common", "magnitude"),
    (".reshape_weight", "common", "reshape"),
    (".lokr_factor", "common", "lokr_factor"),
)
_SORTED = sorted(ROLE_SUFFIXES, key=lambda item: len(item[0]), reverse=True)
_BY_SUFFIX = {suffix: (family, role) for suffix, family, role in ROLE_SUFFIXES}
_UNDERSCORE_FORMS = tuple(s for s, _, _ in _SORTED if not s.startswith("."))

# Tensors without a module prefix (musubi PR #901).
GLOBAL_KEYS = ("lokr_factor", "use_rslora_flag", "use_dora_flag")

# Suffix written for each (family, role) in the kohya/LyCORIS ("default") and diffusers ("other") styles.
KOHYA_SUFFIX = {
    ("lora", "up"): ".lora_up.weight",
    ("lora", "down"): ".lora_down.weight",
    ("lora", "mid"): ".lora_mid.weight",
    ("loha", "w1a"): ".hada_w1_a",
    ("loha", "w1b"): ".hada_w1_b",
    ("loha", "w2a"): ".hada_w2_a",
    ("loha", "w2b"): ".hada_w2_b",
    ("loha", "t1"): ".hada_t1",
    ("loha", "t2"): ".hada_t2",
    ("lokr", "w1"): ".lokr_w1",
    ("lokr", "w1a"): ".lokr_w1_a",
    ("lokr", "w1b"): ".lokr_w1_b",
    ("lokr", "w2"): ".lokr_w2",
    ("lokr", "w2a"): ".lokr_w2_a",
    ("lokr", "w2b"): ".lokr_w2_b",
    ("lokr", "t2"): ".lokr_t2",
    ("full", "diff"): ".diff",
    ("full", "diff_b"): ".diff_b",
    ("full", "set"): ".set_weight",
    ("full", "w_norm"): ".w_norm",
    ("full", "b_norm"): ".b_norm",
    ("common", "alpha"): ".alpha",
    ("common", "dora_scale"): ".dora_scale",
    ("common", "magnitude"): ".dora_scale",
    ("common", "reshape"): ".reshape_weight",
    ("common", "lokr_factor"): ".lokr_factor",
}
DIFFUSERS_SUFFIX = {**KOHYA_SUFFIX, ("lora", "up"): ".lora_B.weight", ("lora", "down"): ".lora_A.weight"}


def split_key(key: str) -> tuple[str, str, str] | None:
    """Return ``(module, family, role)`` for an adapter tensor key, or ``None`` if unknown.

    >>> split_key("lora_unet_blocks_0_ffn_0.lora_down.weight")
    ('lora_unet_blocks_0_ffn_0', 'lora', 'down')
    """
    parts = key.split(".")
    for count in (4, 3, 2, 1):  # longest dotted suffix first, as in the table
        if len(parts) > count:
            suffix = "." + ".".join(parts[-count:])
            found = _BY_SUFFIX.get(suffix)
            if found:
                return key[: -len(suffix)], found[0], found[1]
    for suffix in _UNDERSCORE_FORMS:
        if key.endswith(suffix) and len(key) > len(suffix):
            family, role = _BY_SUFFIX[suffix]
            return key[: -len(suffix)], family, role
    return None
