"""In-process registry behaviour around plugins (no installs): listings stay exact."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import vtprune
from vtprune.core import PluginLoadWarning, Registry
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


def _typo_plugin() -> SimpleNamespace:
    """A third-party strategy with a typo in its selector's name (``top_k`` for ``topk``)."""

    @vtprune.hookimpl
    def vtprune_strategies() -> list[vtprune.StrategySpec]:
        return [
            vtprune.StrategySpec("edge", "feature_norm", "global", "top_k"),
            vtprune.StrategySpec("edge_ok", "feature_norm", "global", "topk"),
        ]

    return SimpleNamespace(vtprune_strategies=vtprune_strategies)


def _registry_with_typo() -> Registry:
    registry = Registry()
    registry.register(stages, name="stages", distribution="vtprune")
    registry.register(baselines, name="baselines", distribution="vtprune")
    registry.register(_typo_plugin(), name="edge_plugin", distribution="vtprune-edge")
    return registry


def test_a_strategy_naming_a_missing_stage_is_isolated_with_a_warning() -> None:
    registry = _registry_with_typo()
    with pytest.warns(PluginLoadWarning) as caught:
        names = registry.names("strategy")
    assert names == ["edge_ok", "random", "uniform"]  # the typo's neighbours all work
    (message,) = [str(w.message) for w in caught]
    for part in ("'edge'", "vtprune-edge", "plugin 'edge_plugin'", "selector 'top_k'",
                 "Did you mean 'topk'?", "unavailable", "VTPRUNE_BLOCK_PLUGINS"):
        assert part in message, part
    ctx = vtprune.PruneContext.create(torch.randn(2, 12, 4), grid=(3, 4), keep=0.5)
    assert registry.get_strategy("edge_ok")(ctx).counts.tolist() == [6, 6]
    assert registry.get_strategy("uniform")(ctx).counts.tolist() == [6, 6]


def test_asking_for_the_isolated_strategy_says_why_it_is_unavailable() -> None:
    registry = _registry_with_typo()
    with pytest.warns(PluginLoadWarning):
        registry.names("strategy")
    with pytest.raises(vtprune.PluginError, match=r"'edge' from vtprune-edge .*selector 'top_k'.*"
                       r"Did you mean 'topk'\?.*unavailable"):
        registry.get_strategy("Edge")
    with pytest.raises(vtprune.PluginError, match="unavailable"):
        registry.compose("feature_norm", "global", "topk", schedule="edge")
    info = {p.name: p for p in registry.plugins()}["edge_plugin"]
    assert info.provides == {"strategy": ["edge_ok"]} and list(info.unavailable) == ["edge"]


def test_the_missing_stage_warning_is_given_once_per_registry() -> None:
    registry = _registry_with_typo()
    with pytest.warns(PluginLoadWarning):
        registry.names("strategy")
    registry.register(_plugin("late"), name="late", distribution="late-dist")  # re-collection
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "late" in registry.names("strategy")


def test_registering_the_missing_stage_later_makes_the_strategy_available() -> None:
    registry = _registry_with_typo()
    with pytest.warns(PluginLoadWarning):
        assert "edge" not in registry.names("strategy")

    @vtprune.hookimpl
    def vtprune_selectors() -> list[vtprune.SelectorSpec]:
        return [vtprune.SelectorSpec("top_k", stages.make_topk)]

    registry.register(SimpleNamespace(vtprune_selectors=vtprune_selectors), name="alias")
    assert registry.get_strategy("edge").stage_names == ("feature_norm", "global", "top_k")


def test_strict_mode_turns_a_missing_stage_into_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VTPRUNE_STRICT_PLUGINS", "1")
    registry = _registry_with_typo()
    with pytest.raises(vtprune.PluginError, match=r"vtprune-edge.*'top_k'.*VTPRUNE_STRICT_PLUGINS"):
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
