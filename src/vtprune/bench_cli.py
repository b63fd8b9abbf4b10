"""``vtprune bench speed|overhead`` and ``vtprune demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _ratios(text: str) -> list[float]:
    try:
        values = [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated keep ratios like 0.5,0.25, got {text!r}") from None
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"keep ratios must lie in (0, 1], got {bad}")
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints like 1,4,16, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {values}")
    return values


def _ratio(text: str) -> float:
    values = _ratios(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one keep ratio in (0, 1], got {text!r}")
    return values[0]


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from .bench.report import format_markdown, write_outputs
    from .bench.speed import QUICK, SIZES, run_speed, with_overrides

    config = with_overrides(QUICK if args.quick else SIZES[args.size], keeps=args.keeps, repeats=args.repeats,
                            threads=args.threads, new_tokens=args.new_tokens)
    result = run_speed(config, strategies=args.strategies, progress=not args.no_progress, log=print)
    paths = write_outputs(result, args.out)
    print(format_markdown(result))
    for kind, path in paths.items():
        print(f"{kind:>9}: {path}")
    return 0


def cmd_bench_slic_quality(args: argparse.Namespace) -> int:
    from .bench.slic_quality import main as slic_quality

    return slic_quality([args.report, *args.rest])


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from .bench.overhead import format_table, run_overhead

    rows = run_overhead(args.strategies, keep=args.keep, repeats=args.repeats, dim=args.dim,
                        threads=args.threads, quick=args.quick, batches=args.batch)
    table = format_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (out / "overhead.md").write_text(table + "\n")
    print(table)
    print(f"     json: {out / 'overhead.json'}\n markdown: {out / 'overhead.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(keep=args.keep, out_dir=args.out, image=args.image, strategies=args.strategies,
             new_tokens=args.new_tokens, repeats=args.repeats, print_fn=print)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``bench`` (with ``speed``, ``overhead`` and ``grounding``) and ``demo``."""
    bench = subparsers.add_parser("bench", help="speed and overhead benchmarks")
    sub = bench.add_subparsers(dest="bench_command", required=True)

    p = sub.add_parser("speed", help="pruned vs unpruned wall-clock: prefill, generate, memory, KV cache")
    p.add_argument("--quick", action="store_true", help="tiny model, one keep, one repeat (seconds)")
    p.add_argument("--size", choices=("base", "large"), default="base",
                   help="benchmark model: base (LLM hidden 512) or large (hidden 1024); default base")
    p.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    p.add_argument("--strategies", type=_csv, default=None, help="comma-separated names (default: all registered)")
    p.add_argument("--keeps", type=_ratios, default=None, help="comma-separated keep ratios (default 0.5,0.25,0.1)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved pairs per cell (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1; see docs/benchmarks.md)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per run (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_speed)

    p = sub.add_parser("overhead", help="cost of the selection step alone, per strategy")
    p.add_argument("--quick", action="store_true", help="576 tokens only, few repeats")
    p.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    p.add_argument("--strategies", type=_csv, default=None, help="comma-separated names (default: all)")
    p.add_argument("--keep", type=_ratio, default=0.1, help="keep ratio (default 0.1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 30)")
    p.add_argument("--dim", type=int, default=1024, help="feature width (default 1024, CLIP ViT-L)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch", type=_ints, default=[1], help="comma-separated batch sizes (default 1), e.g. 1,4,16")
    p.set_defaults(func=cmd_bench_overhead)

    p = sub.add_parser("slic-quality", help="SLIC backends: quality on scene masks, speed, ALTP grounding rows",
                       epilog="example: vtprune bench slic-quality quality --split test --limit 64; "
                              "options of each report: vtprune bench slic-quality quality --help")
    p.add_argument("report", choices=("quality", "speed", "grounding"), help="which report")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the report (--split, --limit, --backends, ...)")
    p.set_defaults(func=cmd_bench_slic_quality)

    from .grounding.cli import add_bench_command  # vtprune bench grounding

    add_bench_command(sub)

    p = subparsers.add_parser("demo", help="every strategy on a tiny local LLaVA: tokens, FLOPs, speed, agreement")
    p.add_argument("--keep", type=_ratio, default=0.25, help="keep ratio (default 0.25)")
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--image", default=None, help="a bundled image name (default: the first)")
    p.add_argument("--strategies", type=_csv, default=None, help="comma-separated names (default: all)")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated per prompt (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed prefill pairs per strategy (default 5)")
    p.set_defaults(func=cmd_demo)
