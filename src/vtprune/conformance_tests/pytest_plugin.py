"""pytest plugin of the conformance kit (entry point ``pytest11: vtprune``).

Loaded by every pytest run in an environment where vtprune is installed, so it imports
neither torch nor ``vtprune.core`` at load time; the kit is imported only when used.

* ``pytest --vtprune-conformance=NAME[,NAME]`` (or ``all``) adds one test per registered
  strategy x named check to the session, e.g. ``vtprune-conformance[uniform-check_deterministic]``;
  ``--vtprune-conformance-examples=N`` sets hypothesis' examples per check (default 30);
  ``--vtprune-conformance-device=DEVICE`` builds the contexts on DEVICE (default cpu).
* The ``vtprune_conformance`` fixture is the kit module
  (``vtprune_conformance.assert_conforms(strategy)``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

OPTION = "--vtprune-conformance"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vtprune", "vtprune conformance kit")
    group.addoption(
        OPTION,
        dest="vtprune_conformance",
        metavar="NAME[,NAME]|all",
        default=None,
        help="run the conformance kit on these registered strategies (or 'all')",
    )
    group.addoption(
        "--vtprune-conformance-examples",
        dest="vtprune_conformance_examples",
        type=int,
        default=None,
        metavar="N",
        help="hypothesis examples per check (default: the kit's, 30)",
    )
    group.addoption(
        "--vtprune-conformance-device",
        dest="vtprune_conformance_device",
        default="cpu",
        metavar="DEVICE",
        help="device the kit builds its contexts on, e.g. cuda (default: cpu)",
    )


class ConformanceItem(pytest.Item):
    """One named check of the kit on one registered strategy."""

    def __init__(
        self, *, strategy: str, check: str, max_examples: int | None, device: str = "cpu", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.strategy_name = strategy
        self.check_name = check
        self.max_examples = max_examples
        self.device = device

    def runtest(self) -> None:
        from . import runner

        strategy = runner._resolve(self.strategy_name, {})
        check = runner._select([self.check_name])[0]
        n = self.max_examples or runner.DEFAULT_MAX_EXAMPLES
        runner.KitCheck(check, n, device=self.device)(strategy)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "vtprune-conformance", None, f"{self.strategy_name}: {self.check_name}"


def _requested(value: str) -> list[str]:
    from ..core import list_strategies

    names = [n.strip() for n in value.split(",") if n.strip()]
    if names == ["all"]:
        return list_strategies()
    known = set(list_strategies())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise pytest.UsageError(
            f"{OPTION}: unknown strategy name(s) {unknown}; registered: {sorted(known)} (or "
            f"'all'). {' '.join(_why_unknown(n) for n in unknown)}"
        )
    return names


def _why_unknown(name: str) -> str:
    """The registry's own error for ``name``: close matches, or why a strategy a plugin
    registers is unavailable (a stage it names is missing)."""
    from ..core import VtpruneError, default_registry

    try:
        default_registry().spec("strategy", name)
    except VtpruneError as err:
        return str(err)
    return f"Strategy names are lower case: use {name.lower()!r}."


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    value = config.getoption("vtprune_conformance")
    if not value:
        return
    from .checks import CHECKS

    examples = config.getoption("vtprune_conformance_examples")
    device = config.getoption("vtprune_conformance_device")
    added: list[pytest.Item] = [
        ConformanceItem.from_parent(
            session,
            name=f"vtprune-conformance[{strategy}-{check.name}]",
            strategy=strategy,
            check=check.name,
            max_examples=examples,
            device=device,
        )
        for strategy in _requested(value)
        for check in CHECKS
    ]
    items.extend(added)
    # Items added here were not collected from a file: report them as collected, so that the
    # terminal's counts ("collected N items", "N tests collected" under --collect-only) include
    # them instead of ending a listing with "no tests collected".
    collected: list[pytest.Item | pytest.Collector] = [*added]
    report = pytest.CollectReport(session.nodeid, "passed", None, collected)
    config.hook.pytest_collectreport(report=report)


@pytest.fixture
def vtprune_conformance() -> ModuleType:
    """The conformance kit (``vtprune.conformance_tests``), imported on first use."""
    return importlib.import_module("vtprune.conformance_tests")
