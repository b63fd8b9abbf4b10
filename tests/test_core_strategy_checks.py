"""The strategy's contract checks: one host read when every stage is right, and on failure
the error names the first stage that broke, even when a later stage ran (or crashed) first."""

from __future__ import annotations

import pytest
import torch

from vtprune.bench.syncs import HostSyncCounter
from vtprune.core import Allocation, ContractError, PruneContext, Strategy
from vtprune.strategies import stages


def ctx() -> PruneContext:
    return PruneContext.create(torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(0)), keep=3)


def norm_scores(c: PruneContext) -> torch.Tensor:
    return c.features.norm(dim=-1)


def global_alloc(c: PruneContext, scores: torch.Tensor) -> Allocation:
    return Allocation(budget=c.budget.clone())


def top(c: PruneContext, scores: torch.Tensor, alloc: Allocation):
    return stages.keep_top(scores, c, alloc)


def strategy(scorer=norm_scores, allocator=global_alloc, selector=top) -> Strategy:
    return Strategy("t", scorer, allocator, selector, stage_names=("s", "a", "c"))


def test_a_right_strategy_reads_the_device_once_for_all_three_checks():
    c = ctx()
    with HostSyncCounter() as plain:
        top(c, norm_scores(c), global_alloc(c, norm_scores(c)))
    with HostSyncCounter() as checked:
        strategy()(c)
    assert checked.count - plain.count == 2  # the verdict, and the host budget's width


def test_nan_scores_are_named_even_when_the_allocator_crashes_on_them():
    def nan_scores(c):
        s = norm_scores(c).clone()
        s[1, 4] = float("nan")
        return s

    def fussy(c, scores):
        if scores.isnan().any():
            raise ValueError("cannot allocate NaN")
        return global_alloc(c, scores)

    with pytest.raises(ContractError, match="scorer 's' broke the contract: .*sample 1, token 4 is nan"):
        strategy(nan_scores, fussy)(ctx())


def test_a_broken_allocation_is_named_although_the_selector_honoured_it():
    def over_quota(c, scores):  # region 0 has 4 tokens but gets a quota of 5
        regions = torch.tensor([[0] * 4 + [1] * 5] * 2)
        return Allocation(c.budget.clone(), regions, torch.tensor([[5, -2], [1, 2]]))

    def pick_first(c, scores, alloc):
        return top(c, torch.arange(9.0).flip(0).expand(2, 9), Allocation(alloc.budget))

    with pytest.raises(ContractError, match="allocator 'a' broke the contract: quotas must be non-negative"):
        strategy(allocator=over_quota, selector=pick_first)(ctx())


def test_a_broken_selection_is_named_with_its_invariant():
    def backwards(c, scores, alloc):
        sel = top(c, scores, alloc)
        return type(sel)(sel.indices.flip(1), sel.counts)

    with pytest.raises(ContractError, match="selector 'c' broke the contract: .*unsorted"):
        strategy(selector=backwards)(ctx())
