"""Access to the pack's node error type as ComfyUI imported it (module name is a custom_nodes path)."""

import sys


def node_error_type(comfy):
    pack = comfy.pack_module
    guard = sys.modules[pack.__name__ + ".nodes.guard"]
    return guard.HadaKronNodeError
