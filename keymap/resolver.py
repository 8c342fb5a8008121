"""Resolve adapter module names against a model's real parameter names (any producer style)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .families import rules_for

MODEL_PREFIX = "diffusion_model."
# (prefix, namespace); longest first. "unet" = the diffusion model, "clip" = text encoders.
PRODUCER_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "unet"),
    ("base_model.model.", "unet"),
    ("diffusion_model.", "unet"),
    ("transformer.", "unet"),
    ("unet.", "unet"),
    ("lora_transformer_", "unet"),
    ("lora_unet_", "unet"),
    ("lycoris_", "unet"),
    ("lora_te1_", "clip"),
    ("lora_te2_", "clip"),
    ("lora_te3_", "clip"),
    ("lora_te_", "clip"),
    ("text_encoders.", "clip"),
    ("text_encoder_2.", "clip"),
    ("text_encoder.", "clip"),
    ("te1.", "clip"),
    ("te2.", "clip"),
)
# A block list is a container named ...blocks / ...layers / ...refiner followed by an index.
_BLOCK = re.compile(r"^((?:[A-Za-z_]+\.)*[A-Za-z_]*(?:blocks|layers|refiner))\.(\d+)\.")


@dataclass(frozen=True)
class Target:
    """Where one adapter module lands: a model parameter key, optionally a row slice of it.

    Attributes:
        key: full parameter key, e.g. ``diffusion_model.layers.0.attention.qkv.weight``.
        offset: ``(dim, start, length)`` for split q/k/v onto a fused weight, else ``None``.
        module: the ComfyUI module path (``layers.0.attention.qkv``) used for filters and blocks.
        via: how it was resolved (``direct``, ``rename``, ``alias``).
    """

    key: str
    offset: tuple[int, int, int] | None = None
    module: str = ""
    via: str = "direct"

    @property
    def patch_key(self):
        """The key ComfyUI's ``add_patches`` takes: a string or ``(key, offset)``."""
        return self.key if self.offset is None else (self.key, self.offset)


def split_producer_prefix(name: str) -> tuple[str, str]:
    """Return ``(namespace, rest)`` with the producer prefix removed (Wan-Fun's ``lora_unet__`` too)."""
    for prefix, namespace in PRODUCER_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            return namespace, rest.lstrip("_") if prefix == "lora_unet_" else rest
    return "unet", name


def normalise(name: str) -> str:
    """Dots and underscores alike: the common ground of every naming style."""
    return name.replace(".", "_")


def _direct_candidates(norm: str) -> tuple[str, ...]:
    """The name itself, without a trailing parameter name, and as an RMSNorm ``scale`` parameter.

    ComfyUI's RMSNorm spells its parameter ``scale`` up to 0.3.x and ``weight`` later, so a norm's
    ``…query_norm`` / ``…query_norm.scale`` / ``…query_norm.weight`` find each other across versions.
    """
    for suffix in ("_weight", "_scale"):
        if norm.endswith(suffix):
            base = norm[: -len(suffix)]
            return (norm, base, base + "_scale")
    return (norm, norm + "_scale")


class KeyResolver:
    """Maps adapter module names to targets in one model.

    Args:
        model_shapes: ``{parameter key: shape}`` of the model (keys start with ``diffusion_model.``
            for diffusion models; any prefix works if ``prefix`` says so).
        family: the model family (enables its rename table); ``None`` tries every table.
        aliases: extra ``{adapter module name: target}`` entries, e.g. ComfyUI's own key map
            (values as ComfyUI writes them: a key, ``(key, offset)`` or ``(key, offset, fn)``), or a
            callable returning them, called only when a name does not name a model module directly.
        prefix: the model-key prefix to strip when indexing module paths.
    """

    def __init__(
        self,
        model_shapes: dict[str, tuple[int, ...]],
        family: str | None = None,
        aliases: dict | None = None,
        prefix: str = MODEL_PREFIX,
    ):
        self.shapes = {k: tuple(v) for k, v in model_shapes.items()}
        self.family = family
        self._aliases = aliases
        self.prefix = prefix
        self.index: dict[str, str] = {}
        self.ambiguous: set[str] = set()
        self._build_index()
        self.block_ordinals = self._block_ordinals()

    @property
    def aliases(self) -> dict:
        """The alias map (built on first use when it was given as a callable)."""
        if callable(self._aliases):
            self._aliases = self._aliases()
        if self._aliases is None:
            self._aliases = {}
        return self._aliases

    def _build_index(self) -> None:
        for key in self.shapes:
            if not key.startswith(self.prefix):
                continue
            path = key[len(self.prefix) :]
            if path.endswith(".bias"):
                continue
            module = path[: -len(".weight")] if path.endswith(".weight") else path
            norm = normalise(module)
            if norm in self.index and self.index[norm] != module:
                self.ambiguous.add(norm)
            self.index.setdefault(norm, module)

    def _block_ordinals(self) -> dict[tuple[str, int], int]:
        ordinals: dict[tuple[str, int], int] = {}
        for key in self.shapes:
            match = _BLOCK.match(key[len(self.prefix) :]) if key.startswith(self.prefix) else None
            if match:
                ordinals.setdefault((match.group(1), int(match.group(2))), len(ordinals))
        return ordinals

    def block_of(self, module: str) -> int | None:
        """Sequential block number of a module (over all block lists in model order), or ``None``."""
        match = _BLOCK.match(module + ".")
        return self.block_ordinals.get((match.group(1), int(match.group(2)))) if match else None

    def weight_key(self, module: str, bias: bool = False) -> str | None:
        """The parameter key for a ComfyUI module path (``.weight``/``.bias``, or a raw parameter)."""
        for key in (f"{self.prefix}{module}.{'bias' if bias else 'weight'}",) + (
            () if bias else (self.prefix + module,)
        ):
            if key in self.shapes:
                return key
        return None

    def resolve(self, name: str, bias: bool = False) -> Target | None:
        """Resolve one adapter module name (as in the file, role suffix removed).

        A name that spells a model module (dots and underscores alike) resolves to it directly;
        otherwise the alias map (ComfyUI's key map) and then the family's rename rules decide.
        """
        namespace, rest = split_producer_prefix(name)
        direct = self._resolve_direct(rest, bias) if namespace == "unet" else None
        if direct is not None:
            return direct
        alias = self.aliases.get(name)
        if alias is not None:
            return self._from_alias(alias, bias)
        return self._resolve_by_rules(normalise(rest), bias) if namespace == "unet" else None

    def _resolve_direct(self, rest: str, bias: bool) -> Target | None:
        for candidate in _direct_candidates(normalise(rest)):
            if candidate in self.index:
                module = (
                    rest if (candidate in self.ambiguous and normalise(rest) == candidate) else self.index[candidate]
                )
                key = self.weight_key(module, bias)
                if key:
                    return Target(key=key, module=module, via="direct")
        return None

    def _resolve_by_rules(self, norm: str, bias: bool) -> Target | None:
        for rule in rules_for(self.family):
            mapped = rule.apply(norm)
            if mapped is None or mapped not in self.index:
                continue
            module = self.index[mapped]
            key = self.weight_key(module, bias)
            if key is None:
                continue
            offset = None
            if rule.slice_fn is not None:
                start, length = rule.slice_fn(self.shapes[self.weight_key(module)])
                offset = (0, start, length)
            return Target(key=key, offset=offset, module=module, via="rename")
        return None

    def _from_alias(self, alias, bias: bool) -> Target | None:
        key, offset = (alias, None) if isinstance(alias, str) else (alias[0], alias[1] if len(alias) > 1 else None)
        if bias:
            key = key[: -len(".weight")] + ".bias" if key.endswith(".weight") else None
        if key is None or key not in self.shapes:
            return None
        module = key[len(self.prefix) :] if key.startswith(self.prefix) else key
        module = module.rsplit(".", 1)[0] if module.endswith((".weight", ".bias")) else module
        return Target(key=key, offset=tuple(offset) if offset else None, module=module, via="alias")

    def target_shape(self, target: Target) -> tuple[int, ...]:
        """Shape of the (sliced) tensor a target patches."""
        shape = self.shapes[target.key]
        if target.offset is None:
            return shape
        dim, _, length = target.offset
        return shape[:dim] + (length,) + shape[dim + 1 :]
