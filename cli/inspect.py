"""``hadakron inspect ADAPTER [--model MODEL] [--json]``: the load report, from the command line."""

from __future__ import annotations

import json

from ..adapters import CONVENTIONS, LoKrWeights
from ..keymap import KeyResolver, split_producer_prefix
from ..loading import LoadOptions, LoadReport, parse_block_strengths, plan_adapter, read_adapter
from ..loading.shapes import implied_lokr_factor
from ..merge import open_model_file
from .parser import say


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show an adapter's load report (against a model file if given)",
        description="Print what an adapter file is (producer, convention, algorithms, ranks, factors) and, "
        "with --model, exactly which model weight each module patches.",
    )
    parser.add_argument("adapter", metavar="ADAPTER", help="adapter file (.safetensors or weights-only .pt)")
    parser.add_argument("--model", metavar="MODEL", help="diffusion-model safetensors to match against (header only)")
    parser.add_argument("--convention", choices=CONVENTIONS, default="auto", help="alpha convention (default auto)")
    parser.add_argument("--blocks", default="", metavar="SPEC", help="per-block strengths, e.g. '0-9:0.5'")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--max-rows", type=int, default=400, help="rows per report section (default 400)")


def run(args) -> int:
    source = read_adapter(args.adapter, args.convention)
    if args.model:
        report, extra = _model_report(source, args.model, args.blocks)
        text = report.render(max_rows=args.max_rows)
    else:
        report, modules = file_report(source)
        extra = {"modules": modules}
        text = _file_text(report, modules, args.max_rows)
    say(json.dumps({**report.to_dict(), **extra}, indent=1, default=str) if args.json else text)
    return 0


def _model_report(source, model_path: str, blocks: str) -> tuple[LoadReport, dict]:
    model = open_model_file(model_path)
    options = LoadOptions(block_strengths=parse_block_strengths(blocks))
    _, report = plan_adapter(source, model.resolver(), options, strict_family=False)
    prefix = model.prefix or "(none)"
    report.notes.insert(0, f"model file {model_path}: {len(model.entries)} tensors, key prefix {prefix}")
    return report, {"model_file": model_path, "model_prefix": model.prefix}


def file_report(source) -> tuple[LoadReport, list[dict]]:
    """The report of the file alone (no model): every module with its algorithm, rank and alpha."""
    _, report = plan_adapter(source, KeyResolver({}), strict_family=False)
    report.unmatched.clear()
    report.other_namespace.clear()
    modules = [_module_row(adapter, report) for adapter in source.parsed.adapters()]
    return report, modules


def _module_row(adapter, report: LoadReport) -> dict:
    rank = adapter.nominal_rank or adapter.weights.rank
    report.ranks["full" if rank is None else rank] += 1
    if adapter.alpha is not None:
        report.alphas[f"{adapter.alpha:g}"] += 1
    out, inp = adapter.weights.out_in()
    if isinstance(adapter.weights, LoKrWeights) and inp is not None:
        report.lokr_factors[implied_lokr_factor(adapter.weights, (out, inp))] += 1
    return {
        "module": adapter.name,
        "namespace": split_producer_prefix(adapter.name)[0],
        "algo": adapter.algo,
        "rank": rank,
        "alpha": adapter.alpha,
        "out": out,
        "in": inp,
        "dora": adapter.dora_scale is not None,
    }


def _file_text(report: LoadReport, modules: list[dict], max_rows: int) -> str:
    lines = [line for line in report.render(max_rows).splitlines() if not line.startswith("  result:")]
    lines.append(f"  modules in file: {len(modules)} (no --model given: nothing was matched)")
    for row in modules[:max_rows]:
        rank = "full" if row["rank"] is None else f"rank {row['rank']}"
        alpha = "" if row["alpha"] is None else f", alpha {row['alpha']:g}"
        where = "" if row["namespace"] == "unet" else f", {row['namespace']}"
        lines.append(f"    {row['module']} [{row['algo']}, {rank}{alpha}, {row['out']}x{row['in'] or '?'}{where}]")
    if len(modules) > max_rows:
        lines.append(f"    ... {len(modules) - max_rows} more")
    return "\n".join(lines)
