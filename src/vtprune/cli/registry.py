"""``vtprune strategies``, ``vtprune adapters`` and ``vtprune plugins``: what is registered,
and from where."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from ..core import Registry, VtpruneError, default_registry
from .args import add_command


def _table(rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows
    )


def _dist(source: str) -> str:
    """The distribution part of :meth:`Registry.source` ("dist (plugin 'name')")."""
    return source.split(" (", 1)[0]


def _needs(registry: Registry, stages: dict[str, str]) -> list[str]:
    return sorted(set().union(*(registry.spec(k, n).capabilities.needs for k, n in stages.items())))


def _strategy_record(registry: Registry, name: str) -> dict[str, Any]:
    spec = registry.spec("strategy", name)
    stages = {"scorer": spec.scorer, "allocator": spec.allocator, "selector": spec.selector}
    schedule = getattr(spec.schedule, "__name__", repr(spec.schedule)) if spec.schedule else None
    return {
        "name": name,
        **stages,
        "params": dict(spec.params),
        "schedule": schedule or "pre-LLM",
        "needs": _needs(registry, stages),
        "description": spec.description,
        "reference": spec.reference,
        "source": registry.source("strategy", name),
    }


def _stage_record(registry: Registry, kind: str, name: str) -> dict[str, Any]:
    spec = registry.spec(kind, name)
    caps = spec.capabilities
    return {
        "name": name,
        "needs": sorted(caps.needs),
        "deterministic": caps.deterministic,
        "batch_consistent": caps.batch_consistent,
        "merges": caps.merges,
        "description": spec.description,
        "source": registry.source(kind, name),
    }


def cmd_strategies(args: argparse.Namespace) -> int:
    """``vtprune strategies [--stages] [--json]``: every registered strategy (and stage)."""
    try:
        registry = default_registry()
        records = [_strategy_record(registry, n) for n in registry.names("strategy")]
        stages = {
            kind: [_stage_record(registry, kind, n) for n in registry.names(kind)]
            for kind in ("scorer", "allocator", "selector")
        } if args.stages else None
    except VtpruneError as err:
        print(f"vtprune: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        out: dict[str, Any] = {"strategies": records}
        if stages is not None:
            out["stages"] = stages
        print(json.dumps(out, indent=2, default=repr))
        return 0
    rows = [["strategy", "scorer / allocator / selector", "schedule", "needs", "from", "description"]]
    for r in records:
        stage_names = f"{r['scorer']} / {r['allocator']} / {r['selector']}"
        needs = ",".join(r["needs"]) or "-"
        rows.append([r["name"], stage_names, r["schedule"], needs, _dist(r["source"]), r["description"]])
    print(_table(rows))
    for kind, items in (stages or {}).items():
        rows = [[f"{kind}s:", "needs", "from", "description"]]
        for st in items:
            needs = ",".join(st["needs"]) or "-"
            rows.append([f"  {st['name']}", needs, _dist(st["source"]), st["description"]])
        print()
        print(_table(rows))
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    """``vtprune adapters [--json]``: every backbone adapter, in the order ``attach`` tries them."""
    from ..backbones import adapter_specs  # torch-side package: imported by this command only

    try:
        records: list[dict[str, Any]] = [
            {
                "name": spec.name,
                "models": list(spec.models),
                "description": spec.description,
                "class": f"{spec.adapter.__module__}.{spec.adapter.__qualname__}",
                "source": source,
            }
            for spec, source in adapter_specs()
        ]
    except VtpruneError as err:
        print(f"vtprune: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = [["adapter", "from", "models", "description"]]
    for r in records:
        rows.append([r["name"], _dist(r["source"]), ", ".join(r["models"]) or "-", r["description"]])
    print(_table(rows))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """``vtprune plugins [--json]``: every plugin: name, distribution, version, what it provides."""
    try:
        infos = default_registry().plugins()
    except VtpruneError as err:
        print(f"vtprune: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    rows = [["plugin", "distribution", "version", "provides"]]
    for info in infos:
        provides = [f"{k}: {', '.join(v)}" for k, v in sorted(info.provides.items())]
        provides += [f"UNAVAILABLE: {reason}" for reason in info.unavailable.values()]
        status = f"FAILED: {info.error}" if info.error else "; ".join(provides) or "(nothing)"
        rows.append([info.name, info.distribution, info.version, status])
    print(_table(rows))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``strategies``, ``adapters`` and ``plugins``."""
    p = add_command(sub, "strategies", "list registered strategies (and, with --stages, stages)",
                    "vtprune strategies --stages")
    p.add_argument("--stages", action="store_true", help="also list every registered stage")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_strategies)
    p = add_command(sub, "adapters",
                    "list backbone adapters: name, distribution, supported model classes",
                    "vtprune adapters --json")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_adapters)
    p = add_command(sub, "plugins", "list plugins: name, distribution, version, what each provides",
                    "vtprune plugins --json")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plugins)
