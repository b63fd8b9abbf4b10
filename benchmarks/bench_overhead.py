"""Selection overhead of every registered strategy (see vtprune.bench.overhead).

    .venv/bin/python benchmarks/bench_overhead.py [--quick] [--out out/bench] [--strategies a,b]

Writes overhead.json and overhead.md to --out and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vtprune.bench.overhead import format_table, run_overhead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="576 tokens only, 5 repeats")
    parser.add_argument("--out", default="out/bench", help="output directory (default out/bench)")
    parser.add_argument("--strategies", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--keep", type=float, default=0.1, help="keep ratio (default 0.1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 30)")
    parser.add_argument("--dim", type=int, default=1024, help="feature width (default 1024)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    names = [s for s in args.strategies.split(",") if s] if args.strategies else None
    rows = run_overhead(names, keep=args.keep, repeats=args.repeats, dim=args.dim,
                        threads=args.threads, quick=args.quick)
    table = format_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "overhead.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'overhead.json'} and {out / 'overhead.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
