"""``vtprune bench speed|overhead|grounding|grounding-sweep``: the benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .args import add_command, csv, key_values, positive, ratio, ratios, typed_list


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from ..bench.report import format_markdown, write_outputs
    from ..bench.speed import QUICK, SIZES, run_speed, with_overrides

    config = with_overrides(QUICK if args.quick else SIZES[args.size], keeps=args.keeps, repeats=args.repeats,
                            threads=args.threads, new_tokens=args.new_tokens, family=args.family)
    result = run_speed(config, strategies=args.strategies, progress=not args.no_progress, log=print)
    return _print_outputs(format_markdown(result), write_outputs(result, args.out))


def _print_outputs(markdown: str, paths: dict[str, Any]) -> int:
    """Print a benchmark's Markdown table, then where each output file went."""
    print(markdown)
    for kind, path in paths.items():
        print(f"{kind:>9}: {path}")
    return 0


def cmd_bench_slic_quality(args: argparse.Namespace) -> int:
    from ..bench.slic_quality import main as slic_quality

    return slic_quality([args.report, *args.rest])


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from ..bench.overhead import format_table, run_overhead

    rows = run_overhead(args.strategies, keep=args.keep, repeats=args.repeats, dim=args.dim,
                        threads=args.threads, quick=args.quick, batches=args.batch, canvas=args.canvas)
    table = format_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (out / "overhead.md").write_text(table + "\n")
    print(table)
    print(f"     json: {out / 'overhead.json'}\n markdown: {out / 'overhead.md'}")
    return 0


def cmd_bench_grounding(args: argparse.Namespace) -> int:
    import torch

    from ..grounding.bench import format_markdown, run_grounding_bench, write_outputs
    from ..grounding.parallel import is_main

    torch.set_num_threads(args.threads)
    result = run_grounding_bench(args.strategies, keeps=args.keeps, split=args.split,
                                 limit=args.limit, seeds=args.seeds, positions=args.positions,
                                 progress=not args.no_progress)
    if not is_main():  # under torchrun every rank holds the gathered result; rank 0 reports
        return 0
    return _print_outputs(format_markdown(result), write_outputs(result, args.out))


def cmd_bench_grounding_sweep(args: argparse.Namespace) -> int:
    import torch

    from ..grounding.sweep import format_sweep_markdown, run_param_sweep

    torch.set_num_threads(args.threads)
    grid = dict(args.param)
    if len(grid) != len(args.param):
        raise SystemExit("each --param name may be given once; list all its values after '='")
    result = run_param_sweep(args.strategy, grid, keeps=args.keeps, split=args.split,
                             limit=args.limit, progress=not args.no_progress)
    from ..grounding.parallel import is_main

    if not is_main():  # under torchrun every rank holds the gathered result; rank 0 reports
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grounding_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_sweep_markdown(result)
    (out / "grounding_sweep.md").write_text(table + "\n")
    print(table)
    print(f"best: {result['best']['params']} (mean mIoU {result['best']['mean_miou']:.3f})")
    print(f"written: {out / 'grounding_sweep.json'}, {out / 'grounding_sweep.md'}")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``bench`` with its ``speed``, ``overhead``, ``grounding``, ``grounding-sweep``."""
    bench = add_command(subparsers, "bench", "benchmarks: speed, selection overhead, grounding quality",
                        "vtprune bench speed --quick")
    sub = bench.add_subparsers(dest="bench_command", required=True)

    p = add_command(sub, "speed", "pruned vs unpruned wall-clock: prefill, generate, memory, KV cache",
                    "vtprune bench speed --quick --strategies altp,fastv")
    p.add_argument("--quick", action="store_true", help="tiny model, one keep, one repeat (seconds)")
    p.add_argument("--size", choices=("base", "large"), default="base",
                   help="benchmark model: base (LLM hidden 512) or large (hidden 1024); default base")
    p.add_argument("--family", choices=("llava", "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe"), default="llava",
                   help="model family of the benchmark model (default llava); Qwen: one image of 576 tokens a prompt")
    p.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    p.add_argument("--strategies", type=csv, default=None, help="comma-separated names (default: all registered)")
    p.add_argument("--keeps", type=ratios, default=None, help="comma-separated keep ratios (default 0.5,0.25,0.1)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved pairs per cell (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1; see docs/benchmarks.md)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per run (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_speed)

    p = add_command(sub, "overhead", "cost of the selection step alone, per strategy",
                    "vtprune bench overhead --quick --keep 0.25")
    p.add_argument("--quick", action="store_true", help="576 tokens only, few repeats")
    p.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    p.add_argument("--strategies", type=csv, default=None, help="comma-separated names (default: all)")
    p.add_argument("--keep", type=ratio, default=0.1, help="keep ratio (default 0.1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 30)")
    p.add_argument("--dim", type=int, default=1024, help="feature width (default 1024, CLIP ViT-L)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch", type=typed_list(positive, "batch sizes"), default=[1],
                   help="comma-separated batch sizes (default 1), e.g. 1,4,16")
    p.add_argument("--canvas", action="store_true",
                   help="images of different sizes on a canvas (Qwen2-VL style): 16 rows, 16 grids")
    p.set_defaults(func=cmd_bench_overhead)

    p = add_command(sub, "slic-quality", "SLIC backends: quality on scene masks, speed, ALTP grounding rows",
                    "vtprune bench slic-quality quality --split test --limit 64")
    p.add_argument("report", choices=("quality", "speed", "grounding"),
                   help="which report (its own options: vtprune bench slic-quality REPORT --help)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the report (--split, --limit, --backends, ...)")
    p.set_defaults(func=cmd_bench_slic_quality)

    p = add_command(sub, "grounding", "every pruning strategy on the grounding stand-in (GCG)",
                    "vtprune bench grounding --strategies altp,uniform --keeps 0.1 --limit 20")
    p.add_argument("--strategies", type=typed_list(str, "strategy names"), default=None,
                   help="comma-separated names (default: all registered)")
    p.add_argument("--keeps", type=ratios, default=[0.5, 0.25, 0.1],
                   help="comma-separated keep ratios (default 0.5,0.25,0.1)")
    p.add_argument("--split", default="test", choices=["val", "test", "test_small"],
                   help="main split (test_small is always added); default test")
    p.add_argument("--limit", type=positive, default=None, help="only the first N scenes")
    p.add_argument("--seeds", type=typed_list(int, "integer seeds"), default=[0, 1, 2],
                   help="seeds for random (default 0,1,2)")
    p.add_argument("--positions", type=typed_list(str, "position modes"), default=["original"],
                   help="original and/or compact for every strategy (altp, fastv, cdpruner "
                        "and dart always get both); default original")
    p.add_argument("--out", default="out/grounding_bench", help="output directory")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_grounding)

    q = add_command(sub, "grounding-sweep",
                    "choose a strategy's parameters on the val split (GCG mIoU)",
                    "vtprune bench grounding-sweep --strategy altp --param segment_ratio=0.25,0.5")
    q.add_argument("--strategy", default="altp", help="registered strategy (default altp)")
    q.add_argument("--param", type=key_values, action="append", required=True,
                   help="NAME=V1,V2,... values to try (repeat for several parameters)")
    q.add_argument("--keeps", type=ratios, default=[0.25, 0.1],
                   help="comma-separated keep ratios (default 0.25,0.1)")
    q.add_argument("--split", default="val", choices=["val"],
                   help="tuning split (val only: never tune on test)")
    q.add_argument("--limit", type=positive, default=None, help="only the first N scenes")
    q.add_argument("--out", default="out/grounding_sweep", help="output directory")
    q.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_bench_grounding_sweep)
