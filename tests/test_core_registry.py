"""Registry errors and composition, on private registries (the process-wide one is untouched)."""

from __future__ import annotations

import pytest
import torch

from vtprune.conformance_tests import check_strategy
from vtprune.core import (
    Capabilities,
    ContractError,
    MissingSignalError,
    PluginError,
    PluginLoadWarning,
    PruneContext,
    Registry,
    ScorerSpec,
    SelectorSpec,
    StrategySpec,
    UnknownNameError,
    hookimpl,
)
from vtprune.strategies import baselines, fastv, stages


def builtins() -> Registry:
    registry = Registry()
    for module, name in ((stages, "stages"), (baselines, "baselines"), (fastv, "fastv")):
        registry.register(module, name=name)
    return registry


def scorer_plugin(name: str, **caps):
    class Plugin:
        @hookimpl
        def vtprune_scorers(self):
            return [ScorerSpec(name, stages.make_feature_norm, Capabilities(**caps))]

    return Plugin()


# -- lookup -------------------------------------------------------------------------------------


def test_unknown_strategy_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as info:
        builtins().get_strategy("unifrom")
    text = str(info.value)
    assert text.startswith("no strategy named 'unifrom'. Did you mean 'uniform'?")
    assert "Registered strategy names: fastv, random, uniform" in text


def test_unknown_stage_and_kind():
    registry = builtins()
    with pytest.raises(UnknownNameError, match="no selector named 'top_k'. Did you mean 'topk'"):
        registry.spec("selector", "top_k")
    with pytest.raises(UnknownNameError, match="unknown kind 'mixer'"):
        registry.names("mixer")
    assert registry.names("allocator") == ["global"]
    assert registry.source("scorer", "random") == "local (plugin 'baselines')"


def test_unknown_parameter_lists_the_accepted_ones():
    registry = builtins()
    with pytest.raises(ContractError, match=r"strategy 'random' has no parameter 'sed'; it accepts \['seed'\]"):
        registry.get_strategy("random", sed=1)
    with pytest.raises(ContractError, match="has no parameter 'seed'"):
        registry.get_strategy("uniform", seed=1)


@pytest.mark.parametrize("name", ["fastv", "random"])
def test_budget_is_not_a_strategy_parameter(name):
    registry = builtins()
    with pytest.raises(ContractError, match=r"\['keep'\] cannot be a parameter.*attach\(model"):
        registry.get_strategy(name, keep=0.2)
    with pytest.raises(ContractError, match=r"\['num_layers'\] cannot be a parameter"):
        registry.get_strategy(name, num_layers=4)


def test_parameters_reach_the_stage_and_the_schedule_that_accept_them():
    registry = builtins()
    random3 = registry.get_strategy("random", seed=3)
    assert random3.params == {"seed": 3}
    ctx = PruneContext.create(torch.randn(1, 16, 2), keep=4)
    again = registry.get_strategy("random", seed=3)(ctx).indices
    assert random3(ctx).indices.equal(again)
    assert registry.get_strategy("fastv", layer=5).schedule(32, 0.5).points[0].layer == 5


# -- registration errors --------------------------------------------------------------------------


def test_duplicate_name_across_two_plugins_names_both():
    registry = builtins()
    registry.register(scorer_plugin("dupe"), name="first", distribution="pkg-a")
    registry.register(scorer_plugin("dupe"), name="second", distribution="pkg-b")
    with pytest.raises(PluginError) as info:
        registry.names("scorer")
    text = str(info.value)
    assert "scorer name 'dupe' is registered twice" in text
    assert "pkg-a (plugin 'first')" in text and "pkg-b (plugin 'second')" in text
    assert "VTPRUNE_BLOCK_PLUGINS" in text


def test_duplicate_plugin_name_is_rejected():
    registry = builtins()
    with pytest.raises(PluginError, match="a plugin named 'stages' is already registered"):
        registry.register(scorer_plugin("other"), name="stages")


def test_strategy_using_an_unregistered_stage_is_isolated_and_reported():
    class Plugin:
        @hookimpl
        def vtprune_strategies(self):
            return [StrategySpec("lonely", "nowhere", "global", "topk")]

    registry = builtins()
    registry.register(Plugin(), name="lonely")
    with pytest.warns(PluginLoadWarning, match=r"uses scorer 'nowhere' \(no plugin registers it"):
        assert "lonely" not in registry.names()
    with pytest.raises(PluginError, match=r"'nowhere' \(no plugin registers it.*unavailable"):
        registry.get_strategy("lonely")


def test_hook_returning_the_wrong_record_type_is_reported():
    class Plugin:
        @hookimpl
        def vtprune_selectors(self):
            return [ScorerSpec("oops", stages.make_constant)]

    registry = builtins()
    registry.register(Plugin(), name="wrong")
    with pytest.raises(PluginError, match="vtprune_selectors of local .* returned ScorerSpec; expected SelectorSpec"):
        registry.names("selector")


@pytest.mark.parametrize("bad", ["Upper", "with space", "1digit", "", None])
def test_invalid_names_are_rejected(bad):
    with pytest.raises(ContractError, match="invalid: use lower-case letters"):
        ScorerSpec(bad, stages.make_constant)


def test_capabilities_reject_unknown_signals():
    with pytest.raises(ContractError, match=r"unknown signals \['pixels'\]"):
        Capabilities(needs=frozenset({"pixels"}))


# -- compose --------------------------------------------------------------------------------------


def test_compose_builds_a_hybrid_from_stages_of_different_plugins():
    registry = builtins()
    hybrid = registry.compose("attention", "global", "uniform_grid", schedule="fastv", layer=3)
    assert hybrid.name == "attention/global/uniform_grid"
    assert hybrid.stage_names == ("attention", "global", "uniform_grid")
    assert hybrid.needs == frozenset({"attention"})
    assert hybrid.schedule(8, 0.5).points[0].layer == 3
    ctx = PruneContext.create(torch.randn(2, 16, 4), keep=0.25, attention=torch.rand(2, 16))
    assert hybrid(ctx).counts.tolist() == [4, 4]
    results = check_strategy(hybrid, 10)
    assert "failed" not in {r.status for r in results}  # the canvas check included: all three stages row_grids
    assert "passed" in {r.status for r in results}


def test_compose_unions_capabilities():
    registry = builtins()
    registry.register(scorer_plugin("noisy", deterministic=False, needs=frozenset({"image"})), name="noisy")
    hybrid = registry.compose("noisy", "global", "topk", name="mix")
    assert hybrid.name == "mix"
    assert hybrid.capabilities == Capabilities(needs=frozenset({"image"}), deterministic=False)


def test_compose_requires_a_schedule_for_in_llm_attention():
    with pytest.raises(ContractError, match="scores with attention from inside the LLM; pass schedule="):
        builtins().compose("attention", "global", "topk")


def test_compose_routes_and_checks_parameters():
    registry = builtins()
    assert registry.compose("random", "global", "topk", seed=7).params == {"seed": 7}
    with pytest.raises(ContractError, match="has no parameter 'layer'"):
        registry.compose("random", "global", "topk", layer=2)
    with pytest.raises(UnknownNameError, match="no allocator named 'globl'"):
        registry.compose("random", "globl", "topk")


# -- the built strategy --------------------------------------------------------------------------


def test_strategy_reports_missing_signals_before_running():
    strategy = builtins().get_strategy("fastv")
    ctx = PruneContext.create(torch.randn(1, 4, 2), keep=2)
    with pytest.raises(MissingSignalError, match=r"strategy 'fastv' needs the context signal\(s\) \['attention'\]"):
        strategy(ctx)


def test_validated_strategy_names_the_stage_that_broke_the_contract():
    class Plugin:
        @hookimpl
        def vtprune_selectors(self):
            def make():
                def select(ctx, scores, alloc):
                    sel = stages.keep_top(scores, ctx, alloc)
                    return type(sel)(sel.indices.flip(1), sel.counts)

                return select

            return [SelectorSpec("backwards", make)]

    registry = builtins()
    registry.register(Plugin(), name="backwards")
    strategy = registry.compose("feature_norm", "global", "backwards")
    ctx = PruneContext.create(torch.randn(1, 9, 2), keep=3)
    with pytest.raises(ContractError, match="selector 'backwards' broke the contract: .*unsorted"):
        strategy(ctx)
