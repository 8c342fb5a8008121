"""One training run end to end, without ComfyUI: targets -> network -> (initial weights | resume) ->
loop -> checkpoints -> final file. The node layer supplies the model access and callbacks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from ..common.atomic import remove_stale_temps
from ..common.errors import AdapterFileError, ConventionError, OutputExistsError
from ..keymap import KeyResolver
from .batches import BatchStream
from .checkpoint import load_state, output_names, rotate, save_adapter_file, save_dtype, save_state, state_path
from .loop import ModelAccess, Trainer
from .metadata import RunInfo, full_metadata
from .network import AdapterNetwork
from .targets import build_specs, candidate_modules, require_supported

LOG = logging.getLogger("hadakron")


def parameter_shapes(root: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{diffusion_model.<name>: shape}`` for every parameter of the diffusion model."""
    return {f"diffusion_model.{name}": tuple(p.shape) for name, p in root.named_parameters()}


class TrainingSession:
    """Builds the network for ``root`` (the diffusion model) and runs/saves/resumes it.

    Args:
        root: the diffusion model module (``BaseModel.diffusion_model``).
        family: HadaKron family name; unsupported families raise with the family named.
        config: a validated :class:`~.config.TrainConfig` (``factor`` already resolved).
        dataset: an ``AdapterDataset``-like object (``items``, optional caption encoders).
        access: the model callables (its ``roots`` get the adapters attached).
        loras_folder: where files go.
        device: where the adapter parameters live.
    """

    def __init__(self, root, family, config, dataset, access: ModelAccess, loras_folder, device="cpu", model_name=""):
        config.family = require_supported(family, type(root).__name__)
        config.validate()
        self.config = config
        self.names = output_names(loras_folder, config.output_name)
        paths = candidate_modules(root.named_modules(), family, config)
        if not paths:
            raise ConventionError("no module matched the target preset and include/exclude filters")
        self.shapes = parameter_shapes(root)
        self.specs = build_specs(paths, self.shapes, family)
        self.network = AdapterNetwork(self.specs, config, torch.Generator().manual_seed(int(config.seed))).to(device)
        self.stream = BatchStream(dataset, config)
        self.trainer = Trainer(self.network, config, self.stream, access)
        self.run = RunInfo(
            num_train_items=sum(max(1, int(getattr(i, "repeats", 1))) for i in dataset.items),
            batches_per_epoch=self.stream.batches_per_epoch(),
            total_steps=self.trainer.total,
            datasets=[{"buckets": {"x".join(map(str, b)): n for b, n in _buckets(dataset).items()}}],
            model_name=model_name,
        )
        self.saved: dict[int, Path] = {}
        self.start_step = 0

    # --- initial weights and resume ----------------------------------------------------------
    def load_initial(self, source, planned) -> str:
        """Copy every structurally matching module of a loaded adapter; returns a one-line summary.

        ``planned`` are the loader's ``PlannedPatch`` es for ``source`` on this model. The file's
        scale (under its detected convention) is kept exactly: low-rank modules get
        ``alpha = γ·r``, full-matrix LoKr has ``γ`` folded into ``w1``.
        """
        by_target = {(p.target.key, p.target.offset): p for p in planned}
        loaded, skipped = 0, []
        for spec, adapter in self.network.items():
            plan = by_target.get((spec.weight_key, spec.offset))
            if plan is None or plan.adapter.algo != adapter.algo:
                continue
            try:
                weights = plan.adapter.weights
                rank = adapter.rank
                adapter.load_weights(weights, None if rank is None else plan.scale * rank)
                if rank is None and plan.scale != 1.0:
                    with torch.no_grad():
                        adapter.w1.mul_(plan.scale)
                loaded += 1
            except Exception as exc:  # structure mismatch of one module: report, keep init
                skipped.append(f"{spec.key_prefix('musubi')}: {exc}")
        if loaded == 0:
            raise AdapterFileError(
                "no module of the initial adapter matches the structure being trained "
                f"({self.config.algo}, dim {self.config.network_dim}, factor {self.config.factor})",
                path=source.path,
            )
        for line in skipped:
            LOG.warning("HadaKron train: initial weights: %s", line)
        return f"initial weights: {loaded}/{len(self.specs)} modules from {Path(source.path).name}"

    def resume(self, adapter_path: str | Path) -> int:
        """Restore the trainer state saved beside ``adapter_path``; returns the step reached."""
        state = load_state(state_path(adapter_path))
        try:
            self.trainer.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise AdapterFileError(
                f"cannot resume: the saved run has another structure ({exc})", path=str(adapter_path)
            ) from exc
        run = state.get("run") or {}
        self.run.started_at = float(run.get("started_at", self.run.started_at))
        self.run.session_id = str(run.get("session_id", self.run.session_id))
        self.start_step = self.trainer.step
        return self.start_step

    def check_outputs(self) -> None:
        """Refuse before training if the run would overwrite files (unless ``overwrite``)."""
        if self.config.overwrite:
            return
        clashes = [p for s, p in self.names.step_files() if s > self.start_step]
        if self.names.final().exists():
            clashes.append(self.names.final())
        if clashes:
            raise OutputExistsError(
                "files of this output name exist; choose another name, resume, or allow overwriting",
                path=str(clashes[0]),
            )

    # --- running and saving ------------------------------------------------------------------
    def train(self, on_step=None, check_interrupt=None, is_interrupt=None) -> Path:
        """Run to the end and write the final file; on an interrupt write a checkpoint and re-raise.

        Temp files that a killed earlier run (``kill -9``) left in the output folder are removed first.
        """
        for stale in remove_stale_temps(self.names.final().parent):
            LOG.info("HadaKron train: removed %s, left by a writer that was killed", stale.name)
        try:
            self.trainer.run(on_step, check_interrupt, on_checkpoint=self.save_checkpoint)
        except BaseException as exc:
            if is_interrupt is not None and is_interrupt(exc) and self.trainer.step > self.start_step:
                if self.trainer.step not in self.saved:
                    path = self.save_checkpoint(self.trainer.step, rotate_old=False)
                    LOG.warning("HadaKron train: interrupted at step %d; checkpoint %s", self.trainer.step, path)
            raise
        return self.save(self.names.final(), self.trainer.step)

    def save_checkpoint(self, step: int, rotate_old: bool = True) -> Path:
        """Write ``<name>-stepN`` (+ sidecar) and rotate old checkpoints."""
        path = self.save(self.names.step(step), step)
        self.saved[step] = path
        if rotate_old:
            rotate(self.names, self.config.keep_last_n)
        return path

    def save(self, path: Path, step: int) -> Path:
        """Adapter file with full metadata, then its resume sidecar."""
        fmt = self.config.key_format
        tensors = self.network.state_dict_for_file(fmt, save_dtype(self.config.save_precision), fmt == "musubi")
        epoch = self.stream.epoch + (1 if self.stream.index >= self.stream.batches_per_epoch() else 0)
        metadata = full_metadata(self.config, self.run, step, epoch, tensors)
        save_adapter_file(path, tensors, metadata, overwrite=self.config.overwrite or path in self.saved.values())
        state = self.trainer.state_dict()
        state["config"] = self.config.to_dict()
        state["run"] = {k: v for k, v in asdict(self.run).items() if k in ("started_at", "session_id")}
        save_state(state_path(path), state)
        return path

    def resolver(self) -> KeyResolver:
        """A resolver over the trained model's shapes (for planning initial weights)."""
        return KeyResolver(self.shapes, family=self.config.family)


def _buckets(dataset) -> dict:
    counts: dict = {}
    for item in dataset.items:
        key = tuple(item.latent.shape)
        counts[key] = counts.get(key, 0) + max(1, int(getattr(item, "repeats", 1)))
    return counts
