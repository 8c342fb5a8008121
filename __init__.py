"""HadaKron: LoHa/LoKr/LoRA adapters, first-class in ComfyUI.

Importable without ComfyUI (``import hadakron`` gives the pure engine). Inside ComfyUI the
node pack registers through ``comfy_entrypoint`` (V3 API); there is deliberately no
``NODE_CLASS_MAPPINGS``, which would make ComfyUI ignore the entrypoint.
"""

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Called by ComfyUI when it loads the pack; imports the ComfyUI glue only now."""
    from .nodes import HadaKronExtension
    from .nodes.routes import register_routes

    register_routes()
    return HadaKronExtension()
