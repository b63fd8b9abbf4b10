"""In-process registry behaviour around plugins (no installs): listings stay exact."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import vtprune
from vtprune.core import Registry
from vtprune.strategies import baselines, stages


def _plugin(strategy: str) -> SimpleNamespace:
    @vtprune.hookimpl
    def vtprune_strategies() -> list[vtprune.StrategySpec]:
        return [vtprune.StrategySpec(strategy, "feature_norm", "global", "topk")]

    return SimpleNamespace(vtprune_strategies=vtprune_strategies)


def test_provides_is_not_duplicated_when_the_registry_is_collected_again() -> None:
    registry = Registry()
    registry.register(stages, name="stages", distribution="vtprune")
    registry.register(baselines, name="baselines", distribution="vtprune")
    first = {p.name: dict(p.provides) for p in registry.plugins()}
    registry.register(_plugin("late"), name="late", distribution="late-dist")  # forces re-collection
    after = {p.name: p.provides for p in registry.plugins()}
    assert after["baselines"] == first["baselines"] == {
        "scorer": ["random"], "selector": ["uniform_grid"], "strategy": ["random", "uniform"]
    }
    assert after["late"] == {"strategy": ["late"]}


def test_in_process_duplicate_strategy_names_both_sources() -> None:
    registry = Registry()
    registry.register(stages, name="stages", distribution="vtprune")
    registry.register(_plugin("twin"), name="one", distribution="dist-one")
    registry.register(_plugin("twin"), name="two", distribution="dist-two")
    with pytest.raises(vtprune.PluginError, match="dist-one.*dist-two"):
        registry.names("strategy")


def test_strategy_using_an_unregistered_stage_names_the_stage() -> None:
    registry = Registry()
    registry.register(_plugin("orphan"), name="orphan", distribution="orphan-dist")
    with pytest.raises(vtprune.PluginError, match="orphan-dist.*'feature_norm'"):
        registry.names("strategy")


def test_a_hook_that_raises_is_reported_with_its_distribution() -> None:
    @vtprune.hookimpl
    def vtprune_strategies() -> list[vtprune.StrategySpec]:
        return [vtprune.StrategySpec("Bad Name", "feature_norm", "global", "topk")]

    registry = Registry()
    registry.register(stages, name="stages", distribution="vtprune")
    registry.register(
        SimpleNamespace(vtprune_strategies=vtprune_strategies), name="bad", distribution="bad-dist"
    )
    with pytest.raises(vtprune.PluginError, match=r"vtprune_strategies of bad-dist \(plugin 'bad'\) "
                       r"raised ContractError: strategy name 'Bad Name' is invalid"):
        registry.names("strategy")
