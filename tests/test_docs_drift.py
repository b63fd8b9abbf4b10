"""Lists in the docs that must follow the code: the strategy catalogue, the adapters, and every
``vtprune`` command and flag the docs show (in the spirit of datasette's documentation tests)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from vtprune.cli import build_parser
from vtprune.core.registry import BUILTIN_DISTRIBUTION, default_registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def builtin(kind: str) -> set[str]:
    reg = default_registry()
    return {n for n in reg.names(kind) if reg.source(kind, n).startswith(f"{BUILTIN_DISTRIBUTION} ")}


def catalogue_rows() -> dict[str, tuple[str, str, str]]:
    """strategy -> (scorer, allocator, selector) from docs/strategies.md's "At a glance"."""
    text = (ROOT / "docs" / "strategies.md").read_text().split("## At a glance", 1)[1]
    rows = {}
    for line in text.split("\n\n", 2)[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        stages = re.findall(r"`([a-z0-9_]+)`", cells[1])
        rows[cells[0].strip("`")] = tuple(stages[:3])
    return rows


def test_catalogue_lists_every_builtin_strategy_with_its_stages() -> None:
    rows = catalogue_rows()
    assert set(rows) == builtin("strategy")
    reg = default_registry()
    for name, stages in rows.items():
        spec = reg.spec("strategy", name)
        assert stages == (spec.scorer, spec.allocator, spec.selector), name


def test_adapters_page_lists_every_builtin_adapter() -> None:
    """docs/adapters.md's `vtprune adapters` listing shows each built-in adapter's row."""
    listing = (ROOT / "docs" / "adapters.md").read_text().split("$ vtprune adapters\n", 1)[1]
    rows = {line.split()[0] for line in listing.split("$ ", 1)[0].splitlines()[1:] if line.strip()}
    assert builtin("adapter") <= rows


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


SHELL = ("bash", "console", "sh", "shell")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every ``vtprune ...`` line in the pages' shell code blocks (and every
    ``$ vtprune ...`` line in any block)."""
    out = []
    for page in PAGES:
        language = None
        for line in page.read_text().replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("```"):
                language = None if language is not None else line[3:].strip() or ""
                continue
            if language is None:
                continue
            if line.startswith("$ ") or language in SHELL:
                line = line.removeprefix("$ ")
                if line.startswith("vtprune "):
                    out.append((page.name, shlex.split(line.split(" #")[0])[1:]))
    return out


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 10


@pytest.mark.parametrize("page,argv", COMMANDS, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in COMMANDS])
def test_documented_commands_and_flags_exist(page: str, argv: list[str]) -> None:
    parser = build_parser()
    words = list(argv)
    while words and words[0] in _subparsers(parser):
        parser = _subparsers(parser)[words.pop(0)]
    assert not _subparsers(parser) or any(a.startswith("-") for a in words) or not words, (
        f"{page}: `vtprune {' '.join(argv)}` names no command of {sorted(_subparsers(parser))}")
    flags = {w.split("=")[0] for w in words if w.startswith("--")}
    unknown = flags - _options(parser)
    assert not unknown, f"{page}: `vtprune {' '.join(argv)}` uses unknown flags {sorted(unknown)}"


def test_plugin_checklist_names_every_capability_flag() -> None:
    from dataclasses import fields

    from vtprune.core import Capabilities

    checklist = (ROOT / "docs" / "writing-a-plugin.md").read_text().split("## 8. Checklist", 1)[1]
    for f in fields(Capabilities):
        assert f"`{f.name}`" in checklist, f.name


def test_only_the_benchmarks_import_strategy_modules() -> None:
    """docs/design.md: strategies are reached through the registry (the benchmarks excepted)."""
    src = ROOT / "src" / "vtprune"
    importers = {p.relative_to(src).parts[0] for p in src.rglob("*.py")
                 if "strategies" not in p.relative_to(src).parts
                 and re.search(r"from \.\.?strategies|from vtprune\.strategies|import vtprune\.strategies", p.read_text())}
    assert importers <= {"bench"}, importers
