"""FastV: the top-attention tokens in original order, per sample, at layer K."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vtprune
from vtprune.core import ContractError
from vtprune.strategies.fastv import fastv_schedule


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 80), frac=st.floats(0, 1), b=st.integers(1, 3), heads=st.sampled_from([0, 1, 4]))
def test_keeps_exactly_the_top_scoring_tokens_in_original_order(n, frac, b, heads):
    g = torch.Generator().manual_seed(n * 7 + b)
    shape = (b, n) if heads == 0 else (b, heads, n)
    att = torch.rand(shape, generator=g)
    ctx = vtprune.PruneContext.create(torch.randn(b, n, 4, generator=g), grid=(1, n), keep=frac, attention=att)
    sel = vtprune.get_strategy("fastv")(ctx)
    mean = att if heads == 0 else att.mean(dim=1)
    for i in range(b):
        k = int(ctx.budget[i])
        kept = sel.indices[i, :k]
        assert torch.equal(kept, kept.sort().values)
        expected = mean[i].topk(k).indices.sort().values  # random scores: no ties
        assert torch.equal(kept, expected)


def test_scores_per_sample_not_from_batch_element_zero():
    att = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.1, 0.9]])
    ctx = vtprune.PruneContext.create(torch.randn(2, 4, 3), grid=(2, 2), keep=1, attention=att)
    sel = vtprune.get_strategy("fastv")(ctx)
    assert sel.indices.tolist() == [[0], [3]]


def test_invalid_tokens_are_never_kept_even_with_high_attention():
    att = torch.tensor([[5.0, 0.1, 0.2, 0.3]])
    valid = torch.tensor([[False, True, True, True]])
    ctx = vtprune.PruneContext.create(torch.randn(1, 4, 3), grid=(2, 2), keep=2, valid=valid, attention=att)
    assert vtprune.get_strategy("fastv")(ctx).indices.tolist() == [[2, 3]]


def test_ties_go_to_the_lower_index():
    ctx = vtprune.PruneContext.create(torch.randn(1, 6, 2), grid=(2, 3), keep=2, attention=torch.ones(1, 6))
    assert vtprune.get_strategy("fastv")(ctx).indices.tolist() == [[0, 1]]


def test_schedule_prunes_once_before_layer_k():
    schedule = vtprune.get_strategy("fastv").schedule(32, 0.5)
    assert [(p.layer, p.keep) for p in schedule.points] == [(2, 0.5)]
    assert schedule.counts(576) == [288]
    assert [p.layer for p in vtprune.get_strategy("fastv", layer=3).schedule(32, 0.25).points] == [3]
    with pytest.raises(ContractError, match="1 <= K"):
        fastv_schedule(32, 0.5, layer=0)
    with pytest.raises(ContractError, match="1 <= K"):
        fastv_schedule(4, 0.5, layer=4)


def test_needs_attention():
    with pytest.raises(vtprune.core.MissingSignalError):
        vtprune.get_strategy("fastv")(vtprune.PruneContext.create(torch.randn(1, 4, 2), grid=(2, 2), keep=2))
