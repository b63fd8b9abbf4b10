"""``Capabilities.regions`` / ``region_quotas``: declared once, read by compose and the kit."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune.conformance_tests.runner import stage_strategy
from vtprune.core import (
    Allocation,
    AllocatorSpec,
    Capabilities,
    ContractError,
    PruneContext,
    Registry,
    default_registry,
    hookimpl,
)
from vtprune.strategies import baselines, divprune, stages

NO_QUOTAS = {"uniform_grid", "divprune", "pool", "sparsevlm", "visionzip", "dart", "dart_visual"}


def test_builtin_selectors_declare_whether_they_take_quotas() -> None:
    reg = default_registry()
    declared = {n for n in reg.names("selector") if not reg.spec("selector", n).capabilities.region_quotas}
    assert NO_QUOTAS <= declared
    assert {"topk", "spread"}.isdisjoint(declared)
    assert {n for n in ("ddc", "ddf") if reg.spec("allocator", n).capabilities.regions} == {"ddc", "ddf"}


@pytest.mark.parametrize("selector", sorted(NO_QUOTAS))
def test_compose_refuses_a_region_allocator_with_a_selector_that_takes_none(selector: str) -> None:
    with pytest.raises(ContractError, match=f"'ddf' splits the budget into region quotas, which selector '{selector}'"):
        vtprune.compose(scorer="feature_norm", allocator="ddf", selector=selector)
    vtprune.compose(scorer="feature_norm", allocator="global", selector=selector)  # fine


def test_kit_reads_the_tag_not_a_probe() -> None:
    assert stage_strategy("selector", "topk").stage_names[1] == "kit:uneven_regions"
    assert stage_strategy("selector", "divprune").stage_names[1] == "global"


def test_an_undeclared_region_allocator_is_refused_at_run_time_with_one_message() -> None:
    """A plugin allocator that makes regions without declaring them still meets the guard."""

    def make_halves():
        def allocate(ctx: PruneContext, scores: torch.Tensor) -> Allocation:
            n = ctx.features.shape[1]
            regions = (torch.arange(n) >= n // 2).long().expand(ctx.features.shape[0], n).clone()
            quotas = torch.stack([ctx.budget // 2, ctx.budget - ctx.budget // 2], dim=1)
            return Allocation(budget=ctx.budget.clone(), regions=regions, quotas=quotas)
        return allocate

    class Plugin:
        @hookimpl
        def vtprune_allocators(self):
            return [AllocatorSpec("halves", make_halves, Capabilities())]

    reg = Registry()
    for module, name in ((stages, "stages"), (baselines, "baselines"), (divprune, "divprune")):
        reg.register(module, name=name)
    reg.register(Plugin(), name="halves")
    strategy = reg.compose("constant", "halves", "divprune")
    ctx = PruneContext.create(torch.randn(2, 12, 4), grid=(3, 4), keep=4)
    with pytest.raises(ContractError, match="selector 'divprune' does not support region quotas"):
        strategy(ctx)
    assert reg.compose("constant", "halves", "topk")(ctx).counts.tolist() == [4, 4]
