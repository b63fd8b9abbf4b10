"""The ``topk`` selector (``strategies/stages.py: keep_top``), with and without region quotas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtprune.core import Allocation, PruneContext, check_selection
from vtprune.strategies.stages import keep_top


def ctx_for(scores: torch.Tensor, budget: list[int], valid: torch.Tensor | None = None) -> PruneContext:
    b, n = scores.shape
    return PruneContext(torch.zeros(b, n, 1), (1, n), torch.tensor(budget), valid=valid)


def test_global_top_k_keeps_highest_and_breaks_ties_by_lower_index():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2], [1.0, 1.0, 1.0, 1.0, 1.0]])
    ctx = ctx_for(scores, [2, 3])
    sel = keep_top(scores, ctx, Allocation(ctx.budget))
    assert [k.tolist() for k in sel.per_sample()] == [[1, 3], [0, 1, 2]]
    assert sel.indices.tolist()[1] == [0, 1, 2]


def test_invalid_tokens_are_never_kept_even_with_top_scores():
    scores = torch.tensor([[9.0, 8.0, 0.1, 0.2, 0.3]])
    valid = torch.tensor([[False, False, True, True, True]])
    ctx = ctx_for(scores, [3], valid)
    sel = keep_top(scores, ctx, Allocation(ctx.budget))
    assert sel.per_sample()[0].tolist() == [2, 3, 4]


def test_bfloat16_scores_are_accepted():
    scores = torch.tensor([[0.5, 0.25, 1.0]], dtype=torch.bfloat16)
    ctx = ctx_for(scores, [1])
    assert keep_top(scores, ctx, Allocation(ctx.budget)).per_sample()[0].tolist() == [2]


def test_region_quotas_are_filled_by_score_inside_each_region():
    #                       region: 0    0    1    1    1    2    -1
    scores = torch.tensor([[0.9, 0.1, 0.3, 0.8, 0.2, 0.0, 5.0]])
    regions = torch.tensor([[0, 0, 1, 1, 1, 2, -1]])
    valid = regions >= 0
    ctx = ctx_for(scores, [3], valid)
    alloc = Allocation(ctx.budget, regions, torch.tensor([[1, 2, 0]]))
    sel = keep_top(scores, ctx, alloc)
    assert sel.per_sample()[0].tolist() == [0, 2, 3]  # not 6 (invalid), not 5 (quota 0)
    check_selection(sel, ctx, alloc)


def test_each_sample_uses_its_own_regions():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    regions = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 0]])
    ctx = ctx_for(scores, [2, 2])
    alloc = Allocation(ctx.budget, regions, torch.tensor([[1, 1], [2, 0]]))
    sel = keep_top(scores, ctx, alloc)
    assert [k.tolist() for k in sel.per_sample()] == [[0, 2], [1, 2]]


def reference_keep_top(scores, valid, regions, quotas):
    """Per sample, per region: the quota tokens of highest score, ties to the lower index."""
    kept = []
    for b in range(scores.shape[0]):
        chosen = []
        for r in range(quotas.shape[1]):
            members = [j for j in range(scores.shape[1]) if valid[b, j] and regions[b, j] == r]
            members.sort(key=lambda j: (-float(scores[b, j]), j))
            chosen += members[: int(quotas[b, r])]
        kept.append(sorted(chosen))
    return kept


@st.composite
def region_problems(draw):
    b, n, r = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 4))
    valid = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=b, max_size=b)))
    ids = draw(st.lists(st.lists(st.integers(0, r - 1), min_size=n, max_size=n), min_size=b, max_size=b))
    regions = torch.where(valid, torch.tensor(ids), -1)
    # scores on a coarse lattice so that ties are common
    scores = torch.tensor(draw(st.lists(st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=b, max_size=b))).float()
    sizes = torch.stack([(regions == k).sum(1) for k in range(r)], dim=1)
    quotas = torch.tensor([[draw(st.integers(0, int(s))) for s in row] for row in sizes.tolist()], dtype=torch.long)
    return scores, valid, regions, quotas


@settings(max_examples=60, deadline=None, database=None)
@given(region_problems())
def test_keep_top_matches_a_reference_with_region_quotas(problem):
    scores, valid, regions, quotas = problem
    budget = quotas.sum(1)
    ctx = ctx_for(scores, budget.tolist(), valid)
    alloc = Allocation(budget, regions, quotas)
    sel = keep_top(scores, ctx, alloc)
    check_selection(sel, ctx, alloc)
    assert [k.tolist() for k in sel.per_sample()] == reference_keep_top(scores, valid, regions, quotas)


@pytest.mark.parametrize("budget", [0, 4])
def test_keep_nothing_and_keep_all(budget):
    scores = torch.rand(2, 4)
    ctx = ctx_for(scores, [budget, budget])
    sel = keep_top(scores, ctx, Allocation(ctx.budget))
    assert sel.counts.tolist() == [budget, budget]
    assert sel.indices.shape == (2, budget)
