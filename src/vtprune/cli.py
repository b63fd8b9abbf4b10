"""The ``vtprune`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .core import default_registry


def cmd_strategies(args: argparse.Namespace) -> int:
    registry = default_registry()
    for name in registry.names("strategy"):
        spec = registry.spec("strategy", name)
        stages = f"{spec.scorer} / {spec.allocator} / {spec.selector}"
        print(f"{name:<24} {stages:<44} {spec.description}")
    if args.stages:
        for kind in ("scorer", "allocator", "selector"):
            print(f"\n{kind}s:")
            for name in registry.names(kind):
                print(f"  {name:<22} {registry.spec(kind, name).description}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    for info in default_registry().plugins():
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.provides.items()))
        status = f"FAILED: {info.error}" if info.error else provides or "(nothing)"
        print(f"{info.name:<16} {info.distribution} {info.version:<10} {status}")
    return 0


# Modules that add their own sub-commands: each defines ``add_commands(subparsers)`` and sets
# ``func`` on its parsers. Imported lazily so that ``vtprune strategies`` stays fast.
COMMAND_MODULES: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("strategies", help="list registered strategies")
    p.add_argument("--stages", action="store_true", help="also list every registered stage")
    p.set_defaults(func=cmd_strategies)
    p = sub.add_parser("plugins", help="list plugins: name, distribution, version, what each provides")
    p.set_defaults(func=cmd_plugins)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
