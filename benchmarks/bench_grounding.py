"""Every pruning strategy on the trained grounding stand-in (see docs/grounding.md).

    .venv/bin/python benchmarks/bench_grounding.py [--limit N] [--keeps 0.5,0.25,0.1] [--out DIR]
    .venv/bin/python benchmarks/bench_grounding.py --sweep --param segment_ratio=0.25,0.5,1

The same as ``vtprune bench grounding`` (or ``vtprune bench grounding-sweep`` with
``--sweep``, val split only); every option of those commands is accepted. The recorded run
behind the docs table is ``benchmarks/results/grounding_bench.json``.
"""

from __future__ import annotations

import sys

from vtprune.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    command = "grounding-sweep" if "--sweep" in args else "grounding"
    sys.exit(main(["bench", command, *[a for a in args if a != "--sweep"]]))
