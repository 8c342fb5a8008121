"""Pure per-algorithm adapter maths (LoRA/LoCon, LoHa, LoKr): parsing, ΔW, scale, bypass forward.

Imports only torch (no ComfyUI). Entry points:

* :func:`parse_adapter_state_dict` — a state dict (+ metadata) to typed :class:`ModuleAdapter` s;
* :meth:`ModuleAdapter.delta` / :func:`apply_to_weight` — ΔW, or an in-place update of a weight;
* :func:`module_scale`, :func:`detect_convention` — the producer's alpha convention;
* :func:`bypass_forward` — the adapter's output for an input without materialising ΔW;
* :func:`factorization`, :func:`init_lokr`, … — training helpers.
"""

from .bypass import bypass_forward
from .convention import CONVENTIONS, ConventionChoice, detect_convention
from .factorization import factorization, lokr_shapes
from .init import init_loha, init_lokr, init_lora
from .parse import ParsedAdapter, parse_adapter_state_dict
from .patch import apply_to_weight, delta_for
from .scale import SCALE_CONVENTIONS, module_scale, portable_full_lokr_alpha
from .types import FullWeights, LoHaWeights, LoKrWeights, LoRAWeights, ModuleAdapter

__all__ = [
    "CONVENTIONS",
    "SCALE_CONVENTIONS",
    "ConventionChoice",
    "FullWeights",
    "LoHaWeights",
    "LoKrWeights",
    "LoRAWeights",
    "ModuleAdapter",
    "ParsedAdapter",
    "apply_to_weight",
    "bypass_forward",
    "delta_for",
    "detect_convention",
    "factorization",
    "init_loha",
    "init_lokr",
    "init_lora",
    "lokr_shapes",
    "module_scale",
    "parse_adapter_state_dict",
    "portable_full_lokr_alpha",
]
