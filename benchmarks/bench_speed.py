"""Speed benchmark: pruned vs unpruned prefill / generate / memory for every strategy.

Same as ``vtprune bench speed``; see docs/benchmarks.md. Examples::

    python benchmarks/bench_speed.py                       # full run (minutes on 2 cores)
    python benchmarks/bench_speed.py --quick               # seconds, tiny model
    python benchmarks/bench_speed.py --strategies altp,fastv --keeps 0.1 --repeats 5
"""

from __future__ import annotations

import sys

from vtprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "speed", *sys.argv[1:]]))
