"""SLIC backends: segmentation quality, speed, ALTP grounding rows (see vtprune.bench.slic_quality).

    .venv/bin/python benchmarks/bench_slic_quality.py quality [--split test] [--limit N]
    .venv/bin/python benchmarks/bench_slic_quality.py speed [--repeats 3]
    .venv/bin/python benchmarks/bench_slic_quality.py grounding [--split test]

Writes slic_<report>.json and slic_<report>.md to --out (default out/bench) and prints the table.
"""

from __future__ import annotations

import sys

from vtprune.bench.slic_quality import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
