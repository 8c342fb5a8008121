"""Bake adapters into a diffusion-model safetensors file, one tensor at a time.

The output has every key, dtype, shape and metadata entry of the input (plus two ``hadakron.*``
metadata entries saying what was baked). Patched weights are computed in fp32 (fp64 stays fp64)
with :func:`hadakron.adapters.apply_to_weight` — LoRA by ``addmm_``, LoKr by a broadcast
``addcmul_``, LoHa in row chunks, so no full ΔW is built — and rounded back to the storage dtype
(stochastically for fp8, seeded by the key, as ComfyUI's patcher does).

Memory: one input tensor is read (``safe_open``, a view of the file's mmap), its fp32 working copy
is patched in place and rounded into the output dtype, which is written before the next tensor is
read. Peak extra memory is the fp32 copy plus the rounded copy of the largest patched layer
(at most two fp32 layers); unpatched tensors are copied from the mmap straight to the output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import apply_to_weight
from ..common.errors import AdapterFileError, ArchitectureMismatchError, OutputExistsError, UnsupportedError
from ..common.tensor_files import ST_TO_DTYPE, write_safetensors_streaming
from ..loading import LoadOptions, LoadReport, PlannedPatch, plan_adapter, read_adapter
from .model_file import BYPASS_HINT, ModelFile, open_model_file
from .rounding import round_to_dtype

BAKEABLE_CODES = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")
SCALED_FP8_MARKERS = ("scale_weight", "weight_scale", "scale_input", "input_scale")
BAKED_TAG = "hadakron.baked"


@dataclass
class BakeAdapter:
    """One adapter to bake: file, strength, scale convention and per-block multipliers."""

    path: str
    strength: float = 1.0
    convention: str = "auto"
    block_strengths: dict[int, float] = field(default_factory=dict)


@dataclass
class KeyPatch:
    """One planned module applied to one model key with the user's strength."""

    planned: PlannedPatch
    strength: float


@dataclass
class BakeReport:
    """What a bake did: the model, each adapter's load report, and how many keys changed."""

    model: str
    out: str
    family: str | None
    prefix: str
    keys_total: int = 0
    keys_patched: int = 0
    patches: int = 0
    adapters: list[tuple[BakeAdapter, LoadReport]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        return (
            f"baked {self.patches} patches from {len(self.adapters)} adapter(s) into {self.keys_patched} of "
            f"{self.keys_total} tensors"
        )

    def render(self, details: bool = False) -> str:
        """Readable text; ``details`` appends each adapter's full load report."""
        lines = [
            f"HadaKron bake: {self.model} -> {self.out}",
            f"  model family: {self.family or 'unknown (generic name mapping)'}; key prefix: {self.prefix or '(none)'}",
        ]
        for adapter, report in self.adapters:
            lines.append(
                f"  {adapter.path} (strength {adapter.strength:g}, convention {report.convention}): "
                f"{report.summary_line()}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  result: {self.summary_line()}")
        if details:
            lines += [report.render() for _, report in self.adapters]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        out = {k: v for k, v in vars(self).items() if k != "adapters"}
        out["adapters"] = [{**vars(a), "report": r.to_dict()} for a, r in self.adapters]
        return out


def bake_file(
    model_path: str | os.PathLike,
    adapters: list[BakeAdapter],
    out_path: str | os.PathLike,
    overwrite: bool = False,
    prefer_lycoris: bool = False,
) -> BakeReport:
    """Bake ``adapters`` (applied in order, additively) into the model file and write ``out_path``.

    Args:
        model_path: diffusion-model safetensors in ComfyUI's native naming (keys with a
            ``model.diffusion_model.``/``diffusion_model.`` prefix or none).
        adapters: files with strength, convention and block strengths.
        out_path: output safetensors; never overwritten unless ``overwrite``.
        prefer_lycoris: compute every ΔW with the LyCORIS library (dense; needs lycoris-lora).

    Raises:
        UnsupportedError: a patched weight is quantised (integer, scaled fp8, GGUF).
        ArchitectureMismatchError: an adapter matches nothing in the model.
        HadaKronError: any unreadable or inconsistent input (always with the file's path).
    """
    _check_output(Path(model_path), Path(out_path), overwrite)
    backend = _backend(prefer_lycoris)
    model = open_model_file(model_path)
    report = BakeReport(str(model_path), str(out_path), model.family, model.prefix, keys_total=len(model.entries))
    by_key = plan_bake(model, adapters, report)
    _check_bakeable(model, by_key)
    report.keys_patched = len(by_key)
    report.patches = sum(len(v) for v in by_key.values())
    metadata = _out_metadata(model.metadata, adapters)
    _write(model, by_key, Path(out_path), metadata, overwrite, backend)
    return report


def _check_output(model_path: Path, out_path: Path, overwrite: bool) -> None:
    """Fail before any work: an existing output (unless ``overwrite``) or the input itself."""
    if out_path.exists() and model_path.exists() and out_path.samefile(model_path):
        raise OutputExistsError("the output is the input model; write to another file", path=str(out_path))
    if out_path.exists() and not overwrite:
        raise OutputExistsError("file exists; choose another name or allow overwriting", path=str(out_path))


def _backend(prefer_lycoris: bool) -> str:
    if not prefer_lycoris:
        return "native"
    from ..adapters.lycoris_backend import _functional

    _functional()  # a clear OptionalDependencyError now, not halfway through the file
    return "lycoris"


def plan_bake(model: ModelFile, adapters: list[BakeAdapter], report: BakeReport) -> dict[str, list[KeyPatch]]:
    """Plan every adapter against the model; returns ``{file key: [KeyPatch, …]}`` in application order."""
    resolver = model.resolver()
    by_key: dict[str, list[KeyPatch]] = {}
    for adapter in adapters:
        source = read_adapter(adapter.path, adapter.convention)
        options = LoadOptions(block_strengths=dict(adapter.block_strengths))
        planned, load_report = plan_adapter(source, resolver, options)
        if not planned:
            raise ArchitectureMismatchError(
                f"no module of this adapter matches the model ({len(load_report.unmatched)} unmatched, "
                f"{len(load_report.shape_mismatched)} shape-mismatched); nothing was written",
                path=adapter.path,
            )
        if load_report.other_namespace:
            count = len(load_report.other_namespace)
            report.notes.append(f"{adapter.path}: {count} text-encoder modules not baked (diffusion model only)")
        report.adapters.append((adapter, load_report))
        for p in planned:
            by_key.setdefault(model.to_file_key[p.target.key], []).append(KeyPatch(p, adapter.strength))
    return by_key


def _check_bakeable(model: ModelFile, by_key: dict[str, list[KeyPatch]]) -> None:
    scaled = "scaled_fp8" in model.entries
    for file_key in by_key:
        code = model.entries[file_key]["dtype"]
        if code not in BAKEABLE_CODES:
            raise UnsupportedError(f"{file_key} is stored as {code} (quantised); {BYPASS_HINT}", path=model.path)
        stem = file_key.rsplit(".", 1)[0]
        if code.startswith("F8") and (scaled or any(f"{stem}.{m}" in model.entries for m in SCALED_FP8_MARKERS)):
            raise UnsupportedError(f"{file_key} is scaled fp8 (weight × scale); {BYPASS_HINT}", path=model.path)


def _out_metadata(metadata: dict[str, str], adapters: list[BakeAdapter]) -> dict[str, str]:
    from .. import __version__

    try:
        previous = json.loads(metadata.get(BAKED_TAG, "[]"))
    except json.JSONDecodeError:
        previous = []
    baked = previous if isinstance(previous, list) else []
    baked += [
        {"adapter": Path(a.path).name, "strength": a.strength, "convention": a.convention, "blocks": a.block_strengths}
        for a in adapters
    ]
    return {**metadata, "hadakron.producer": f"hadakron {__version__}", BAKED_TAG: json.dumps(baked)}


def _write(model: ModelFile, by_key: dict, out_path: Path, metadata: dict, overwrite: bool, backend: str) -> None:
    from safetensors import safe_open

    specs = [(k, ST_TO_DTYPE[e["dtype"]], tuple(e["shape"])) for k, e in model.entries.items()]
    to_resolver_key = {v: k for k, v in model.to_file_key.items()}
    try:
        with safe_open(model.path, framework="pt", device="cpu") as handle:

            def produce(file_key: str) -> torch.Tensor:
                tensor = handle.get_tensor(file_key)
                patches = by_key.get(file_key)
                if not patches:
                    return tensor
                return patched_tensor(tensor, patches, to_resolver_key[file_key], backend)

            write_safetensors_streaming(out_path, specs, produce, metadata, overwrite=overwrite)
    except (RuntimeError, ValueError) as exc:  # safetensors raises SafetensorError(Exception) for bad data
        raise AdapterFileError(f"cannot read tensor data: {exc}", path=model.path) from exc


def patched_tensor(tensor: torch.Tensor, patches: list[KeyPatch], key: str, backend: str = "native") -> torch.Tensor:
    """``tensor`` with every patch applied in a fp32 (fp64 for fp64) copy, rounded back to its dtype."""
    dtype = tensor.dtype
    # Always a real copy: safe_open hands out copy-on-write views of its mmap, and patching one in
    # place would turn its pages into private memory that lives until the file is closed.
    work = tensor.to(torch.float64 if dtype == torch.float64 else torch.float32, copy=True)
    for item in patches:
        target = item.planned.target
        view = work if target.offset is None else work.narrow(*target.offset)
        apply_to_weight(item.planned.adapter, view, item.strength, item.planned.scale, backend=backend)
    return round_to_dtype(work, dtype, key)
