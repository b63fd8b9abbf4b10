"""The ``vtprune`` command line: prune visual tokens of vision-language models.

One module per command group; each defines ``add_commands(subparsers)`` and sets ``func`` on
its parsers (:mod:`.args` holds the shared argument types). Heavy imports (torch, models)
happen inside the commands, so ``vtprune --help`` and ``vtprune strategies`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, demo, glamm, grounding, registry, sa2va, show

GROUPS = (demo, registry, show, bench, grounding, glamm, sa2va)  # the order ``vtprune --help`` lists them


def build_parser() -> argparse.ArgumentParser:
    """The full ``vtprune`` parser (every command group registered)."""
    parser = argparse.ArgumentParser(
        prog="vtprune", description=__doc__.split("\n", 1)[0].split(": ", 1)[1],
        epilog="example:\n  vtprune demo          # start here\n  vtprune demo --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vtprune`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
