#!/usr/bin/env python3
"""Generate the musubi-tuner reference fixtures in tests/fixtures/musubi/.

musubi-tuner is on no package registry, so CI cannot run it. This script is run by hand
against a local checkout and its (small) outputs are committed. It IMPORTS musubi from the
path given with --musubi (the checkout's ``src`` folder); no musubi code is copied here.

    python scripts/gen_musubi_fixtures.py --musubi /tmp/musubi/src \
        --musubi-commit <sha> [--out tests/fixtures/musubi]

What it does (details and observed semantics: tests/fixtures/musubi/PROVENANCE.md):

1. Builds tiny WAN / Z-Image module trees whose class and module names trigger musubi's
   own architecture detection (``WanAttentionBlock``, ``ZImageTransformerBlock``), with
   ALL-ZERO base weights and biases, so every merged weight equals musubi's ΔW and the
   references apply to any base (expected = base + ΔW).
2. Creates musubi networks with musubi's ``create_arch_network`` (LoRA, LoHa, LoKr),
   ``apply_to``, fills every adapter parameter with seeded ``randn * 0.1`` and saves with
   musubi's ``LoRANetwork.save_weights(file, torch.float32, metadata)`` (as the trainer
   does: it always passes a save dtype, fp32 by default).
3. Records references (``<name>.reference.safetensors``), for every targeted module m:
     input.<m>         fixed seeded probe X, shape (K, in_features)
     merged_proj.<m>   X @ W_merged^T, W_merged from musubi's inference merge path
                       ``utils.lora_utils.load_safetensors_with_lora_and_fp8`` (what
                       wan/zimage_generate_image use), multiplier 1.0, base = 0
     output.<m>        musubi's training-module forward on X (LoRAModule/LoHaModule/
                       LoKrModule after ``apply_to``), multiplier 1.0, base = 0, bias = 0
   plus ``merged.<m>.weight`` (full merged weight = ΔW) for one module per WAN file.
   The script also merges with ``LoRANetwork.merge_to`` (``create_arch_network_from_weights
   (for_inference=True)``, the --base_weights / merge_lora.py path) and asserts all three
   agree.
4. Runs musubi's converters: ``convert_lora.convert(..., "other" / "default")`` and
   ``networks.convert_z_image_lora_to_comfy.main`` (default options and ``--lokr_rank 8``,
   and ``--reverse`` on the fused LoRA).
5. Writes manifest.json (torch version, musubi commit, sha256 of every file, musubi log lines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

K_PROBES = 3
PARAM_STD = 0.1
MULTIPLIER = 1.0


# --------------------------------------------------------------------------------------------
# Tiny module trees. Only class names, module names and Linear shapes matter to musubi.
# --------------------------------------------------------------------------------------------


class WanSelfAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)


class WanT2VCrossAttention(WanSelfAttention):
    pass


class WanAttentionBlock(nn.Module):
    def __init__(self, dim, ffn_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.cross_attn = WanT2VCrossAttention(dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))


class Head(nn.Module):
    def __init__(self, dim, out_dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * 4)
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))


class WanModel(nn.Module):
    """ComfyUI tiny WAN 2.1 names/shapes: dim 128, ffn 256, 2 blocks."""

    def __init__(self, dim=128, ffn_dim=256, num_layers=2, text_dim=64, freq_dim=256, in_dim=16, out_dim=16):
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(dim, ffn_dim) for _ in range(num_layers)])
        self.head = Head(dim, out_dim)


class ZImageRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)


class ZImageAttention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        head_dim = dim // n_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        self.norm_q = ZImageRMSNorm(head_dim)
        self.norm_k = ZImageRMSNorm(head_dim)


class ZImageTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, ffn_dim, modulation=True):
        super().__init__()
        self.attention = ZImageAttention(dim, n_heads)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.attention_norm1 = ZImageRMSNorm(dim)
        self.ffn_norm1 = ZImageRMSNorm(dim)
        self.attention_norm2 = ZImageRMSNorm(dim)
        self.ffn_norm2 = ZImageRMSNorm(dim)
        if modulation:
            self.adaLN_modulation = nn.ModuleList([nn.Linear(min(dim, 256), 4 * dim, bias=True)])


class ZImageTransformer2DModel(nn.Module):
    """dim 256, ffn 512, 8 heads, 1 layer (+1 noise refiner, +1 context refiner: excluded by musubi)."""

    def __init__(self, dim=256, n_heads=8, ffn_dim=512, n_layers=1):
        super().__init__()
        self.noise_refiner = nn.ModuleList([ZImageTransformerBlock(dim, n_heads, ffn_dim, True)])
        self.context_refiner = nn.ModuleList([ZImageTransformerBlock(dim, n_heads, ffn_dim, False)])
        self.layers = nn.ModuleList([ZImageTransformerBlock(dim, n_heads, ffn_dim, True) for _ in range(n_layers)])


def zero_model(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.records: list[str] = []

    def emit(self, record):
        if record.name.startswith("musubi_tuner"):
            self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def take(self) -> list[str]:
        out, self.records = self.records, []
        return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def linear_names(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def lora_name_of(dotted: str) -> str:
    return "lora_unet_" + dotted.replace(".", "_")


def fill_random(network: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(network.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * PARAM_STD)


def probes(targets: dict[str, nn.Linear], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(K_PROBES, lin.in_features, generator=g) for m, lin in sorted(targets.items())}


def read_file(path: Path):
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    return sd, md


# --------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------


class Generator:
    def __init__(self, out: Path, tmp: Path, musubi_commit: str):
        self.out = out
        self.tmp = tmp
        self.manifest = {
            "musubi_commit": musubi_commit,
            "torch": torch.__version__,
            "k_probes": K_PROBES,
            "param_std": PARAM_STD,
            "multiplier": MULTIPLIER,
            "base_weights": "zeros (weights and biases); merged weight == musubi ΔW",
            "files": {},
        }
        self.log = LogCapture()
        logging.getLogger().addHandler(self.log)
        logging.getLogger().setLevel(logging.INFO)

        from musubi_tuner import convert_lora
        from musubi_tuner.networks import convert_z_image_lora_to_comfy, loha, lokr, lora, lora_wan, lora_zimage
        from musubi_tuner.utils import lora_utils

        self.convert_lora = convert_lora
        self.zconv = convert_z_image_lora_to_comfy
        self._patch_zconv_contiguous()
        self.mods = {"lora": lora, "loha": loha, "lokr": lokr, "lora_wan": lora_wan, "lora_zimage": lora_zimage}
        self.lora_utils = lora_utils

    def _patch_zconv_contiguous(self):
        """Work around a musubi bug (commit 30c658c): the Z-Image converter's LoKr->LoRA branch builds
        lora_up/lora_down from slices of torch.linalg.svd outputs, which are column-major on CPU, so
        safetensors (0.4.5 as pinned by musubi, and 0.8) refuses to save them ("non contiguous
        tensor"). We make every tensor contiguous right before musubi hashes/saves the dict
        (values unchanged) and record which keys needed it."""
        zconv = self.zconv
        orig_hash, orig_save = zconv.precalculate_safetensors_hashes, zconv.save_file
        self.noncontiguous: list[str] = []

        def contig(sd):
            for k in list(sd):
                if isinstance(sd[k], torch.Tensor) and not sd[k].is_contiguous():
                    self.noncontiguous.append(k)
                    sd[k] = sd[k].contiguous()
            return sd

        zconv.precalculate_safetensors_hashes = lambda sd, md: orig_hash(contig(sd), md)
        zconv.save_file = lambda sd, path, metadata=None: orig_save(contig(sd), path, metadata=metadata)

    # ---- bookkeeping
    def clean(self, obj):
        """Replace local absolute paths in recorded strings by <out>/<tmp>."""
        if isinstance(obj, dict):
            return {k: self.clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.clean(v) for v in obj]
        if isinstance(obj, str):
            return obj.replace(str(self.tmp), "<tmp>").replace(str(self.out), "<out>")
        return obj

    def logs(self) -> list[str]:
        """musubi log lines since the last call, de-duplicated (count appended)."""
        counts: dict[str, int] = {}
        for line in self.log.take():
            counts[line] = counts.get(line, 0) + 1
        return [line + (f"  (x{n})" if n > 1 else "") for line, n in counts.items()]

    def record(self, path: Path, **info):
        sd, md = read_file(path)
        entry = {
            "bytes": path.stat().st_size,
            "sha256": sha256(path),
            "num_tensors": len(sd),
            "dtypes": sorted({str(v.dtype) for v in sd.values()}),
            "metadata": md,
        }
        entry.update(info)
        logs = self.logs()
        if logs:
            entry["musubi_log"] = logs
        self.manifest["files"][path.name] = self.clean(entry)

    # ---- model factory
    @staticmethod
    def build(arch: str) -> nn.Module:
        return zero_model(WanModel() if arch == "wan" else ZImageTransformer2DModel())

    # ---- one adapter file + reference
    def make_adapter(
        self,
        name: str,
        arch: str,
        algo: str,
        dim: int,
        alpha: float,
        network_args: dict,
        seed: int,
        same_reference_as: str | None = None,
    ):
        """algo in lora|loha|lokr. network_args as the trainer passes them (string values).
        same_reference_as: do not write a reference; assert this file's references equal that one's."""
        model = self.build(arch)
        if algo == "lora":
            net_module = "networks.lora_wan" if arch == "wan" else "networks.lora_zimage"
            create = self.mods["lora_wan" if arch == "wan" else "lora_zimage"]
        else:
            net_module = f"networks.{algo}"
            create = self.mods[algo]
        call = f"{net_module}.create_arch_network(1.0, {dim}, {alpha}, None, [], unet, **{network_args!r})"
        network = create.create_arch_network(1.0, dim, alpha, None, [], model, **dict(network_args))
        network.apply_to([], model, apply_text_encoder=False, apply_unet=True)
        fill_random(network, seed)
        network.eval()

        metadata = {
            "ss_base_model_version": "wan" if arch == "wan" else "z_image",
            "ss_network_module": net_module,
            "ss_network_dim": str(dim),
            "ss_network_alpha": str(alpha),
        }
        if network_args:
            metadata["ss_network_args"] = json.dumps(network_args)
        path = self.out / f"{name}.safetensors"
        network.save_weights(str(path), torch.float32, metadata)
        self.record(
            path,
            produced_by=f"{call}; apply_to; params := randn(seed={seed})*{PARAM_STD}; "
            "network.save_weights(path, torch.float32, metadata)",
        )

        # ---- references
        lora_sd = load_file(str(path))
        targets = {n: m for n, m in linear_names(model).items() if lora_name_of(n) + ".alpha" in lora_sd}
        xs = probes(targets, seed + 1000)

        # (a) forward of musubi's training modules (model's Linear.forward now calls the adapter)
        with torch.no_grad():
            fwd = {m: targets[m](xs[m]) for m in targets}

        # (b) inference merge path used by wan_generate_video / zimage_generate_image
        base_file = self.tmp / f"{name}.base.safetensors"
        save_file({k: v.contiguous() for k, v in self.build(arch).state_dict().items()}, str(base_file))
        merged_sd = self.lora_utils.load_safetensors_with_lora_and_fp8(
            model_files=str(base_file),
            lora_weights_list=[dict(lora_sd)],
            lora_multipliers=[MULTIPLIER],
            fp8_optimization=False,
            calc_device=torch.device("cpu"),
        )

        # (c) network merge path (create_arch_network_from_weights(for_inference=True).merge_to)
        model_c = self.build(arch)
        kw = {"factor": network_args["factor"]} if "factor" in network_args else {}
        net_c = create.create_arch_network_from_weights(
            MULTIPLIER, dict(lora_sd), unet=model_c, for_inference=True, **kw
        )
        net_c.merge_to(None, model_c, dict(lora_sd), device=torch.device("cpu"))
        lin_c = linear_names(model_c)

        ref = {}
        checks = {}
        for m in sorted(targets):
            wb = merged_sd[m + ".weight"].float()
            wc = lin_c[m].weight.float()
            with torch.no_grad():
                pb = xs[m] @ wb.T
            d_bc = (wb - wc).abs().max().item()
            d_fwd = (pb - fwd[m]).abs().max().item()
            scale = max(pb.abs().max().item(), 1e-12)
            checks[m] = {
                "max|W_lora_utils - W_merge_to|": d_bc,
                "max|merged_proj - output|/max|merged_proj|": d_fwd / scale,
            }
            assert d_bc <= 1e-6 * max(wb.abs().max().item(), 1e-12), (name, m, d_bc)
            assert d_fwd <= 1e-5 * scale, (name, m, d_fwd, scale)
            assert (merged_sd[m + ".bias"] == 0).all() if (m + ".bias") in merged_sd else True
            ref[f"input.{m}"] = xs[m].contiguous()
            ref[f"merged_proj.{m}"] = pb.contiguous()
            ref[f"output.{m}"] = fwd[m].contiguous()
            assert wb.abs().max() > 0, (name, m, "ΔW is zero")
        full = "blocks.0.self_attn.q" if arch == "wan" else None
        if full is not None:
            ref[f"merged.{full}.weight"] = merged_sd[full + ".weight"].float().contiguous()
        ref_md = {
            "source": path.name,
            "multiplier": str(MULTIPLIER),
            "base": "zeros",
            "merged_from": "musubi_tuner.utils.lora_utils.load_safetensors_with_lora_and_fp8",
            "output_from": "musubi training module forward after LoRANetwork.apply_to",
            "targets": json.dumps(sorted(targets)),
        }
        if same_reference_as is not None:
            other = load_file(str(self.out / f"{same_reference_as}.reference.safetensors"))
            assert set(other) == set(ref), name
            for k in ref:
                assert torch.equal(other[k], ref[k]), (name, k)
            self.manifest["files"][path.name]["reference"] = (
                f"{same_reference_as}.reference.safetensors (asserted identical)"
            )
            return path
        rpath = self.out / f"{name}.reference.safetensors"
        save_file(ref, str(rpath), ref_md)
        self.record(
            rpath, source=path.name, checks={k: max(c[k] for c in checks.values()) for k in next(iter(checks.values()))}
        )
        return path

    # ---- converters
    def convert_lora_roundtrip(self, src: Path):
        other = self.out / src.name.replace(".safetensors", ".other.safetensors")
        self.convert_lora.convert(str(src), str(other), "other", None)
        self.record(
            other,
            produced_by=f"musubi_tuner.convert_lora.convert('{src.name}', '{other.name}', 'other', None)"
            "  (== convert_lora.py --input SRC --output DST --target other)",
        )
        back = self.out / src.name.replace(".safetensors", ".other.default.safetensors")
        self.convert_lora.convert(str(other), str(back), "default", None)
        self.record(
            back,
            produced_by=f"musubi_tuner.convert_lora.convert('{other.name}', '{back.name}', 'default', None)"
            "  (== convert_lora.py --input SRC --output DST --target default)",
        )

    def zimage_comfy(self, src: Path, suffix: str, lokr_rank=None, reverse=False, keep=True):
        dst_dir = self.out if keep else self.tmp
        dst = dst_dir / src.name.replace(".safetensors", f".{suffix}.safetensors")
        ns = argparse.Namespace(src_path=str(src), dst_path=str(dst), reverse=reverse, lokr_rank=lokr_rank)
        self.noncontiguous = []
        self.zconv.main(ns)
        cli = (
            "convert_z_image_lora_to_comfy.py SRC DST"
            + (" --reverse" if reverse else "")
            + (f" --lokr_rank {lokr_rank}" if lokr_rank is not None else "")
        )
        info = {"produced_by": f"musubi_tuner.networks.convert_z_image_lora_to_comfy.main({ns!r})  (== {cli})"}
        if self.noncontiguous:
            info["made_contiguous_before_save (musubi bug workaround)"] = sorted(set(self.noncontiguous))
        if keep:
            self.record(dst, **info)
        else:
            sd, _ = read_file(dst)
            self.manifest.setdefault("not_kept", {})[dst.name] = self.clean(
                {
                    **info,
                    "bytes": dst.stat().st_size,
                    "shapes": {k: list(v.shape) for k, v in sd.items() if "qkv" in k},
                    "musubi_log": self.logs(),
                }
            )
        return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--musubi", required=True, help="musubi-tuner src folder (contains musubi_tuner/)")
    ap.add_argument("--musubi-commit", default="unknown", help="commit id of that checkout (recorded)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "musubi"))
    args = ap.parse_args()

    sys.path.insert(0, os.path.abspath(args.musubi))
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):
        old.unlink()

    with tempfile.TemporaryDirectory() as td:
        gen = Generator(out, Path(td), args.musubi_commit)

        # 1. WAN (dim 128, ffn 256, 2 blocks)
        wan_lora = gen.make_adapter("wan_lora_r4_a2", "wan", "lora", 4, 2.0, {}, seed=1)
        gen.make_adapter("wan_loha_r4_a2", "wan", "loha", 4, 2.0, {}, seed=2)
        wan_lokr = gen.make_adapter("wan_lokr_r4_a2", "wan", "lokr", 4, 2.0, {}, seed=3)
        wan_lokr_full = gen.make_adapter("wan_lokr_full_r64_a64", "wan", "lokr", 64, 64.0, {}, seed=4)
        # same seed as the a64 file, --network_alpha 16: musubi forces alpha := dim (64) in full-matrix mode,
        # so tensors, stored alpha and ΔW are identical; only ss_network_alpha differs ("16.0").
        gen.make_adapter(
            "wan_lokr_full_r64_a16", "wan", "lokr", 64, 16.0, {}, seed=4, same_reference_as="wan_lokr_full_r64_a64"
        )
        wan_lokr_f4 = gen.make_adapter("wan_lokr_f4_r4_a1", "wan", "lokr", 4, 1.0, {"factor": "4"}, seed=5)

        # 3. convert_lora.py round trips
        for p in (wan_lora, wan_lokr, wan_lokr_full, wan_lokr_f4):
            gen.convert_lora_roundtrip(p)

        # 2. Z-Image (dim 256, ffn 512, 1 layer)
        z_lora = gen.make_adapter("zimage_lora_r4_a2", "zimage", "lora", 4, 2.0, {}, seed=11)
        z_loha = gen.make_adapter("zimage_loha_r4_a2", "zimage", "loha", 4, 2.0, {}, seed=12)
        z_lokr = gen.make_adapter("zimage_lokr_r4_a2", "zimage", "lokr", 4, 2.0, {}, seed=13)
        z_lokr_f4 = gen.make_adapter("zimage_lokr_f4_r2_a1", "zimage", "lokr", 2, 1.0, {"factor": "4"}, seed=14)

        z_lora_c = gen.zimage_comfy(z_lora, "comfy")
        gen.zimage_comfy(z_lora_c, "reverse", reverse=True)
        gen.zimage_comfy(z_loha, "comfy")
        gen.zimage_comfy(z_lokr, "comfy", keep=False)  # auto rank: too large to commit, recorded only
        gen.zimage_comfy(z_lokr, "comfy_rank8", lokr_rank=8)
        gen.zimage_comfy(z_lokr_f4, "comfy")
        gen.zimage_comfy(z_lokr_f4, "comfy_rank8", lokr_rank=8)

        (out / "manifest.json").write_text(
            json.dumps(gen.manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        )

    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    for p in sorted(out.glob("*.safetensors")):
        print(f"{p.stat().st_size:>8}  {p.name}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
