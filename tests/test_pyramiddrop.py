"""PyramidDrop: boundaries scaled to the depth, per-stage counts, top attention at each stage."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune.core import ContractError
from vtprune.strategies.pyramiddrop import average_keep, pdrop_keeps, pdrop_layers, pdrop_schedule


def test_paper_setting_on_a_32_layer_model():
    schedule = vtprune.get_strategy("pyramiddrop").schedule(32, 0.5)
    assert [p.layer for p in schedule.points] == [8, 16, 24]
    assert schedule.counts(576) == [288, 144, 72]  # 50 / 25 / 12.5 % of the original
    assert schedule.positions == "original"
    assert schedule.attention == "current"  # layer K's own projections score the boundary
    assert vtprune.get_strategy("fastv").schedule(32, 0.5).attention == "previous"


@pytest.mark.parametrize(
    "depth, layers", [(8, [2, 4, 6]), (4, [1, 2, 3]), (40, [10, 20, 30]), (24, [6, 12, 18]), (12, [3, 6, 9])]
)
def test_boundaries_scale_with_depth(depth, layers):
    assert pdrop_layers(depth) == layers
    schedule = pdrop_schedule(depth, 0.5)
    assert [p.layer for p in schedule.points] == layers
    assert schedule.counts(576) == [288, 144, 72]


def test_keep_is_the_first_stage_share_and_ratio_is_lambda():
    assert pdrop_schedule(32, 0.4, ratio=0.5).counts(1000) == [400, 200, 100]
    assert pdrop_schedule(32, 0.5, ratio=0.8).counts(1000) == [500, 400, 320]
    assert pdrop_keeps(100, 3, 0.5) == [100, 50, 25]
    assert pdrop_schedule(32, 100).counts(576) == [100, 50, 25]


def test_custom_layers_and_errors():
    assert [p.layer for p in pdrop_schedule(6, 0.5, layers=[2, 4]).points] == [2, 4]
    with pytest.raises(ContractError, match=">= 4 decoder layers"):
        pdrop_schedule(3, 0.5)
    with pytest.raises(ContractError, match="strictly increasing"):
        pdrop_schedule(8, 0.5, layers=[4, 2])
    with pytest.raises(ContractError, match="strictly increasing"):
        pdrop_schedule(8, 0.5, layers=[0, 2])
    with pytest.raises(ContractError, match=r"ratio \(λ\)"):
        pdrop_schedule(32, 0.5, ratio=1.5)
    # the strategy routes its parameters to the schedule factory
    s = vtprune.get_strategy("pyramiddrop", layers=[1, 3], ratio=0.25)
    assert s.schedule(4, 0.5).counts(64) == [32, 8]


def test_average_keep_matches_the_papers_token_count():
    # (8 * 1 + 8 * 0.5 + 8 * 0.25 + 8 * 0.125) / 32
    assert average_keep(32, 0.5, 576) == pytest.approx(15 / 32)


def test_each_stage_keeps_the_top_attention_among_survivors():
    torch.manual_seed(0)
    n = 64
    att = torch.rand(1, 4, n)  # per head; the scorer averages heads
    strategy = vtprune.get_strategy("pyramiddrop")
    counts = strategy.schedule(8, 0.5).counts(n)
    valid = torch.ones(1, n, dtype=torch.bool)
    for count in counts:
        ctx = vtprune.PruneContext(
            features=torch.randn(1, n, 8), grid=(8, 8), budget=torch.tensor([count]), valid=valid,
            attention=att, original_count=n,
        )
        kept = strategy(ctx).indices[0]
        mean = att.mean(dim=1)[0].masked_fill(~valid[0], -1)
        expected = mean.topk(count).indices.sort().values
        assert torch.equal(kept, expected)
        valid = torch.zeros_like(valid)
        valid[0, kept] = True
    assert int(valid.sum()) == 8
