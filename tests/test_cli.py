"""``vtprune strategies`` and ``vtprune plugins``, called in-process through ``cli.main``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import vtprune
from vtprune import cli
from vtprune.core import Registry, default_registry
from vtprune.strategies import baselines, fastv, stages


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def lines_starting(out: str, word: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.split()[:1] == [word]]


@pytest.fixture
def small_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry holding only the built-in modules plus whatever a test registers."""
    registry = Registry()
    for module, name in ((stages, "stages"), (baselines, "baselines"), (fastv, "fastv")):
        registry.register(module, name=name, distribution="vtprune", version="0.1.0")
    monkeypatch.setattr(cli.registry, "default_registry", lambda: registry)
    return registry


def test_strategies_lists_every_strategy_with_its_stages(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "strategies")
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["strategy", "scorer"]
    for name in vtprune.list_strategies():
        (row,) = lines_starting(out, name)
        spec = default_registry().spec("strategy", name)
        assert f"{spec.scorer} / {spec.allocator} / {spec.selector}" in row
        assert spec.description in row
    (fastv_row,) = lines_starting(out, "fastv")
    assert "fastv_schedule" in fastv_row and "attention" in fastv_row
    (random_row,) = lines_starting(out, "random")
    assert "pre-LLM" in random_row
    assert "scorers:" not in out  # stages only on request


def test_strategies_stages_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "strategies", "--stages")
    assert code == 0
    for kind in ("scorer", "allocator", "selector"):
        assert f"{kind}s:" in out
        for name in vtprune.list_stages(kind):
            assert any(ln.split()[:1] == [name] for ln in out.splitlines()), (kind, name)
    (row,) = [ln for ln in out.splitlines() if ln.strip().startswith("uniform_grid")]
    assert "even lattice over the grid" in row and "vtprune" in row


def test_strategies_json(capsys: pytest.CaptureFixture[str], small_registry: Registry) -> None:
    code, out, _ = run(capsys, "strategies", "--json", "--stages")
    assert code == 0
    data = json.loads(out)
    by_name = {s["name"]: s for s in data["strategies"]}
    assert sorted(by_name) == ["fastv", "random", "uniform"]
    fv = by_name["fastv"]
    assert set(fv) == {"name", "scorer", "allocator", "selector", "params", "schedule", "needs",
                       "description", "reference", "source"}
    assert (fv["scorer"], fv["allocator"], fv["selector"]) == ("attention", "global", "topk")
    assert (fv["schedule"], fv["needs"]) == ("fastv_schedule", ["attention"])
    assert "2403.06764" in fv["reference"]
    assert by_name["uniform"]["schedule"] == "pre-LLM" and by_name["uniform"]["needs"] == []
    assert by_name["random"]["source"].startswith("vtprune (plugin 'baselines')")
    scorers = {s["name"]: s for s in data["stages"]["scorer"]}
    assert scorers["attention"]["needs"] == ["attention"]
    assert scorers["random"]["deterministic"] is True
    assert [s["name"] for s in data["stages"]["allocator"]] == ["global"]
    code, out, _ = run(capsys, "strategies", "--json")
    assert "stages" not in json.loads(out)


def test_plugins_lists_name_distribution_version_and_provides(
    capsys: pytest.CaptureFixture[str], small_registry: Registry
) -> None:
    @vtprune.hookimpl
    def vtprune_strategies() -> list[vtprune.StrategySpec]:
        return [vtprune.StrategySpec("norms", "feature_norm", "global", "topk")]

    small_registry.register(
        SimpleNamespace(vtprune_strategies=vtprune_strategies),
        name="mine", distribution="my-dist", version="9.9",
    )
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert out.splitlines()[0].split() == ["plugin", "distribution", "version", "provides"]
    (row,) = lines_starting(out, "baselines")
    assert row.split()[1:3] == ["vtprune", "0.1.0"]
    assert "scorer: random; selector: uniform_grid; strategy: random, uniform" in row
    (row,) = lines_starting(out, "mine")
    assert row.split()[1:3] == ["my-dist", "9.9"] and row.endswith("strategy: norms")

    code, out, _ = run(capsys, "plugins", "--json")
    records = {p["name"]: p for p in json.loads(out)}
    assert records["mine"] == {
        "name": "mine", "distribution": "my-dist", "version": "9.9",
        "module": records["mine"]["module"], "provides": {"strategy": ["norms"]}, "error": None,
        "unavailable": {},  # strategies naming a missing stage, with the reason
    }
    assert records["fastv"]["provides"] == {"scorer": ["attention"], "strategy": ["fastv"]}


def test_a_plugin_conflict_is_reported_as_an_error_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str], small_registry: Registry
) -> None:
    @vtprune.hookimpl
    def vtprune_strategies() -> list[vtprune.StrategySpec]:
        return [vtprune.StrategySpec("random", "feature_norm", "global", "topk")]

    small_registry.register(
        SimpleNamespace(vtprune_strategies=vtprune_strategies), name="clash", distribution="clash-dist"
    )
    for argv in (["strategies"], ["plugins", "--json"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == ""
        assert err.startswith("vtprune: error: strategy name 'random' is registered twice")
        assert "clash-dist" in err and "vtprune (plugin 'baselines')" in err


def test_unknown_subcommand_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
