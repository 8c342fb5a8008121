"""ComfyUI glue: V3 node classes and the extension that registers them.

This package is the only place (with the root ``__init__.py``) that imports ComfyUI. Each
feature module (``load.py``, ``merge.py`` ...) lists its node classes in a module-level
``NODES``; they are collected here in :data:`NODE_MODULES` order.
"""

import importlib

from ._comfy import ComfyExtension

NODE_MODULES = ("load", "merge", "merge_lowrank", "convert", "dataset", "train")


def _collect_nodes() -> list:
    classes = []
    for name in NODE_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # feature not present in this build
            raise
        classes.extend(getattr(module, "NODES", []))
    return classes


NODE_CLASSES = _collect_nodes()
HADAKRON_NODE_IDS = tuple(cls.define_schema().node_id for cls in NODE_CLASSES)


class HadaKronExtension(ComfyExtension):
    """Registers every HadaKron node."""

    async def get_node_list(self):
        return list(NODE_CLASSES)


__all__ = ["HADAKRON_NODE_IDS", "NODE_CLASSES", "HadaKronExtension"]
