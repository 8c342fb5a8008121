"""Peak memory of baking adapters into a model file: HadaKron's streaming merge vs load-everything.

Each side runs in its own child process so ``ru_maxrss`` measures it alone:
* ``hadakron``: ``python -m hadakron merge`` (one tensor at a time, in-place LoKr/LoHa/LoRA updates);
* ``load-all``: the usual script: load the whole state dict, add a materialised ΔW per layer, save.

    .venv/bin/python -m bench.bench_memory [--blocks 6] [--dim 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from hadakron.adapters import lokr_shapes
from hadakron.common.tensor_files import save_tensor_file

from .harness import Bench, Timing

LINEARS = {
    "self_attn.q": (1, 1),
    "self_attn.k": (1, 1),
    "self_attn.v": (1, 1),
    "self_attn.o": (1, 1),
    "ffn.0": (4, 1),
    "ffn.2": (1, 4),
}

LOAD_ALL = """
import json, resource, sys, time, torch
from safetensors.torch import load_file, save_file
from hadakron.loading import read_adapter, plan_adapter
from hadakron.keymap import KeyResolver
from hadakron.adapters import module_scale
start = time.perf_counter()
model = load_file(sys.argv[1])
shapes = {"diffusion_model." + k: tuple(v.shape) for k, v in model.items()}
source = read_adapter(sys.argv[2])
patches, _ = plan_adapter(source, KeyResolver(shapes))
for p in patches:
    key = p.target.key[len("diffusion_model."):]
    model[key] = model[key] + p.scale * p.adapter.delta(tuple(model[key].shape)).to(model[key].dtype)
save_file(model, sys.argv[3])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start}))
"""

HADAKRON = """
import json, resource, sys, time
from hadakron.cli import main
start = time.perf_counter()
code = main(["merge", "--model", sys.argv[1], "--adapter", sys.argv[2], "--out", sys.argv[3]])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start, "code": code}))
"""

BASELINE = """
import json, resource, torch, hadakron.cli, safetensors.torch
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_files(folder: Path, blocks: int, dim: int) -> tuple[Path, Path, float]:
    gen = torch.Generator().manual_seed(0)
    model, adapter = {}, {}
    for b in range(blocks):
        for name, (mo, mi) in LINEARS.items():
            out, inp = dim * mo, dim * mi
            model[f"blocks.{b}.{name}.weight"] = torch.randn(out, inp, generator=gen) * 0.02
            (out_l, in_m), (out_k, in_n) = lokr_shapes(out, inp, -1)
            prefix = f"lora_unet_blocks_{b}_{name.replace('.', '_')}"
            adapter.update(
                {
                    f"{prefix}.lokr_w1": torch.randn(out_l, in_m, generator=gen),
                    f"{prefix}.lokr_w2_a": torch.randn(out_k, 8, generator=gen) * 0.01,
                    f"{prefix}.lokr_w2_b": torch.randn(8, in_n, generator=gen) * 0.01,
                    f"{prefix}.alpha": torch.tensor(8.0),
                }
            )
    size_mb = sum(t.numel() * 4 for t in model.values()) / 2**20
    return (
        save_tensor_file(model, folder / "model.safetensors"),
        save_tensor_file(adapter, folder / "lokr.safetensors"),
        size_mb,
    )


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[Bench]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args(argv)
    bench = Bench("Peak memory: baking a LoKr into a model file")
    with tempfile.TemporaryDirectory() as tmp:
        model, adapter, size_mb = write_files(Path(tmp), args.blocks, args.dim)
        base = child(BASELINE)["rss_mb"]
        ours = child(HADAKRON, model, adapter, Path(tmp) / "ours.safetensors")
        naive = child(LOAD_ALL, model, adapter, Path(tmp) / "naive.safetensors")
    extra_ours, extra_naive = ours["rss_mb"] - base, naive["rss_mb"] - base
    bench.ratio(
        f"peak extra RSS, streaming merge vs load-all ({size_mb:.0f} MiB fp32 model)",
        Timing("hadakron merge (MiB)", [extra_ours]),
        Timing("load-all (MiB)", [extra_naive]),
    )
    bench.notes.append(
        f"model {size_mb:.0f} MiB; interpreter+libraries baseline {base:.0f} MiB; extra over baseline: "
        f"hadakron {extra_ours:.0f} MiB, load-all {extra_naive:.0f} MiB (values are MiB, not seconds)"
    )
    print(bench.markdown())
    return [bench]


if __name__ == "__main__":
    main()
