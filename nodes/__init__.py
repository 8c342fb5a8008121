"""ComfyUI glue: V3 node classes and the extension that registers them.

This package is the only place (with the root ``__init__.py``) that imports ComfyUI.
"""

from ._comfy import ComfyExtension
from .load import LoadAdapter

NODE_CLASSES = [LoadAdapter]
HADAKRON_NODE_IDS = tuple(cls.define_schema().node_id for cls in NODE_CLASSES)


class HadaKronExtension(ComfyExtension):
    """Registers every HadaKron node."""

    async def get_node_list(self):
        return list(NODE_CLASSES)


__all__ = ["HADAKRON_NODE_IDS", "NODE_CLASSES", "HadaKronExtension"]
