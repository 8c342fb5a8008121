"""The one place HadaKron binds to ComfyUI's node API version (pin it here)."""

from comfy_api.latest import ComfyExtension, io, ui

SCHEMA_FIELDS = set(getattr(io.Schema, "__dataclass_fields__", {}))


def schema(**fields) -> io.Schema:
    """``io.Schema`` that drops fields this ComfyUI version does not know (e.g. ``search_aliases``)."""
    return io.Schema(**{k: v for k, v in fields.items() if k in SCHEMA_FIELDS})


__all__ = ["ComfyExtension", "io", "schema", "ui"]
