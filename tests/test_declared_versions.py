"""Declared = tested: the torch / transformers range in pyproject.toml has exactly the two ends
that `make test-oldest` and `make test-newest` install, and CI runs both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name: r for r in reqs}


def _pins(which: str) -> dict[str, Version]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^PINS_{which}\s*:=\s*(.+)$", text, re.MULTILINE)
    assert match, f"Makefile has no PINS_{which}"
    return {name: Version(v) for name, v in (p.split("==") for p in match.group(1).split())}


def _bounds(req: Requirement) -> tuple[Version, Version]:
    lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
    upper = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert len(lower) == 1 and len(upper) == 1, f"{req}: declare one >= and one < bound"
    return lower[0], upper[0]


@pytest.mark.parametrize("name", ["torch", "transformers"])
def test_range_ends_are_the_tested_pins(name: str) -> None:
    lower, upper = _bounds(_requirements()[name])
    oldest, newest = _pins("oldest")[name], _pins("newest")[name]
    assert oldest == lower, f"{name}: the oldest tested ({oldest}) must be the declared floor ({lower})"
    assert newest in _requirements()[name].specifier, f"{name} {newest} is outside the declared range"
    # the upper bound admits only the newest tested minor release (policy in docs/adapters.md)
    assert upper == Version(f"{newest.major}.{newest.minor + 1}"), (
        f"{name}: upper bound {upper} must be the minor release after the newest tested {newest}"
    )


def test_ci_runs_both_ends() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    make = (ROOT / "Makefile").read_text()
    assert all(f"make {target}\n" in ci for target in ("test", "test-oldest", "test-newest")), ci
    assert re.search(r"^test-versions:\s*test-oldest test-newest", make, re.MULTILINE)


def test_the_conformance_kit_needs_no_extra() -> None:
    """hypothesis is a dependency, so `import vtprune.conformance_tests` works after a plain
    `pip install vtprune` (it used to need the [test] extra and failed with a bare
    ModuleNotFoundError)."""
    assert "hypothesis" in _requirements()


# -- the [lmms] extra: tested in its own venv (`make test-lmms`) on constraints-lmms.txt ------
def _constraints(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            pkg, version = line.split("==", 1)
            pins[pkg.strip().lower().replace("_", "-")] = Version(version.strip())
    return pins


def _extra(extra: str) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["optional-dependencies"][extra]]
    return {r.name.lower(): r for r in reqs}


@pytest.mark.parametrize("name", ["lmms-eval", "torchvision"])
def test_lmms_extra_range_is_the_tested_pin(name: str) -> None:
    lower, upper = _bounds(_extra("lmms")[name])
    tested = _constraints("constraints-lmms.txt")[name]
    assert tested == lower, f"{name}: the tested pin ({tested}) must be the [lmms] floor ({lower})"
    assert upper == Version(f"{tested.major}.{tested.minor + 1}"), (
        f"{name}: [lmms] upper bound {upper} must be the minor release after the tested {tested}"
    )


def test_lmms_env_lies_inside_the_declared_ranges() -> None:
    pins = _constraints("constraints-lmms.txt")
    for name in ("torch", "transformers"):
        assert pins[name] in _requirements()[name].specifier, (
            f"constraints-lmms.txt pins {name} {pins[name]}, outside pyproject.toml's range"
        )


def test_ci_runs_the_lmms_env() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    make = (ROOT / "Makefile").read_text()
    tox = (ROOT / "tox.ini").read_text()
    assert "make test-lmms" in ci
    assert re.search(r"^\.venv-lmms/\.installed:.*constraints-lmms\.txt", make, re.MULTILINE)
    assert '-c constraints-lmms.txt -e ".[test,lmms]"' in make
    assert "[testenv:lmms]" in tox and "constraints-lmms.txt" in tox
