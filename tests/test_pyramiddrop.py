"""PyramidDrop: boundaries scaled to the depth, per-stage counts, top attention at each stage."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune.core import ContractError, keep_count
from vtprune.strategies.pyramiddrop import (
    average_keep,
    max_average_keep,
    pdrop_average_keeps,
    pdrop_keeps,
    pdrop_layers,
    pdrop_schedule,
)


def test_paper_setting_on_a_32_layer_model():
    schedule = vtprune.get_strategy("pyramiddrop", budget="first").schedule(32, 0.5)
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
    schedule = pdrop_schedule(depth, 0.5, budget="first")
    assert [p.layer for p in schedule.points] == layers
    assert schedule.counts(576) == [288, 144, 72]


def test_budget_first_keep_is_the_first_stage_share_and_ratio_is_lambda():
    assert pdrop_schedule(32, 0.4, ratio=0.5, budget="first").counts(1000) == [400, 200, 100]
    assert pdrop_schedule(32, 0.5, ratio=0.8, budget="first").counts(1000) == [500, 400, 320]
    assert pdrop_keeps(100, 3, 0.5) == [100, 50, 25]
    assert pdrop_schedule(32, 100, budget="first").counts(576) == [100, 50, 25]
    # keep=1.0 is the identity in both readings; just below it, "first" halves again
    assert pdrop_schedule(4, 1.0, budget="first").counts(144) == [144, 144, 144]
    assert pdrop_schedule(4, 1.0, budget="average").counts(144) == [144, 144, 144]
    assert pdrop_schedule(4, 0.99, budget="first").counts(144) == [143, 71, 36]
    assert pdrop_schedule(4, 0.1, budget="first").counts(144) == [14, 7, 4]


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
    s = vtprune.get_strategy("pyramiddrop", layers=[1, 3], ratio=0.25, budget="first")
    assert s.schedule(4, 0.5).counts(64) == [32, 8]


def test_average_keep_matches_the_papers_token_count():
    # (8 * 1 + 8 * 0.5 + 8 * 0.25 + 8 * 0.125) / 32
    assert average_keep(32, 0.5, 576, budget="first") == pytest.approx(15 / 32)
    # budget="average": layers 0..7 see all 576, layers 8..31 see 288 on average
    assert average_keep(32, 0.5, 576) == pytest.approx((8 * 576 + 8 * (494 + 247 + 123)) / (32 * 576))


def test_each_stage_keeps_the_top_attention_among_survivors():
    torch.manual_seed(0)
    n = 64
    att = torch.rand(1, 4, n)  # per head; the scorer averages heads
    strategy = vtprune.get_strategy("pyramiddrop")
    counts = strategy.schedule(8, 0.5).counts(n)
    assert counts == [55, 27, 14]  # mean 0.5 * 64 = 32 over layers 2..7
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
    assert int(valid.sum()) == 14


# ---------------------------------------------------------------- budget="average" (the default)


def per_layer(schedule, num_layers: int, original: int) -> list[int]:
    """Visual tokens each decoder layer sees under ``schedule``."""
    out = [original] * num_layers
    for point, count in zip(schedule.points, schedule.counts(original)):
        out[point.layer:] = [count] * (num_layers - point.layer)
    return out


@pytest.mark.parametrize(
    "depth, keep, original, layers",
    [
        # k = 0.1 * 3 / 1.75 = 17.1% -> 24.7, 12.3, 6.2 of 144 tokens
        (4, 0.1, 144, [144, 25, 12, 6]),
        # an int keep is a mean count: 14 * 3 / 1.75 = 24 exactly, then 12 and 6
        (4, 14, 144, [144, 24, 12, 6]),
        # k = 0.1 * 24 / 14 -> 98.7, 49.4, 24.7 of 576
        (32, 0.1, 576, [576] * 8 + [99] * 8 + [49] * 8 + [25] * 8),
        # 58 * 24 / 14 = 99.4, 49.7, 24.9: each stage rounded from its exact value, not chained
        (32, 58, 576, [576] * 8 + [99] * 8 + [50] * 8 + [25] * 8),
        (32, 0.5, 576, [576] * 8 + [494] * 8 + [247] * 8 + [123] * 8),
    ],
)
def test_average_budget_known_counts(depth, keep, original, layers):
    schedule = vtprune.get_strategy("pyramiddrop").schedule(depth, keep)
    assert [p.layer for p in schedule.points] == pdrop_layers(depth)
    assert schedule.attention == "current"
    assert per_layer(schedule, depth, original) == layers


@pytest.mark.parametrize("depth", [4, 8, 12, 24, 32, 40])
@pytest.mark.parametrize("keep", [0.05, 0.1, 0.25, 0.5, 0.58, 7, 58, 200])
def test_average_budget_mean_over_pruned_layers_is_keep(depth, keep):
    original = 576
    schedule = pdrop_schedule(depth, keep)
    first = schedule.points[0].layer
    tokens = per_layer(schedule, depth, original)
    assert tokens[:first] == [original] * first  # nothing pruned before the first boundary
    mean = sum(tokens[first:]) / (depth - first)
    stages = len(schedule.points)
    # each stage's count is rounded half up from its exact share, so the mean over the pruned
    # layers is within half a token of the requested mean, and within one of keep's count
    target = keep if isinstance(keep, int) else keep * original
    assert abs(mean - target) <= 0.5 + 1e-9
    assert abs(mean - keep_count(keep, original)) <= 1.0
    assert stages == 3
    assert tokens == sorted(tokens, reverse=True)  # still a pyramid
    # the same figure as FastV's keep fixes for the layers after its prune layer
    assert average_keep(depth, keep, original) == pytest.approx(
        (first * original + (depth - first) * mean) / (depth * original)
    )


def test_average_budget_stages_stay_geometric_and_follow_ratio_and_layers():
    shares = pdrop_average_keeps(0.1, [1, 1, 1], 0.5)
    assert shares == pytest.approx([0.1 * 3 / 1.75, 0.1 * 3 / 3.5, 0.1 * 3 / 7])
    # ratio 1 keeps the same share on every stage: keep itself, so keep=1.0 prunes nothing
    assert pdrop_schedule(4, 0.25, ratio=1.0).counts(144) == [36, 36, 36]
    assert pdrop_schedule(4, 1.0, ratio=1.0).counts(144) == [144, 144, 144]
    # custom boundaries with unequal stages: layers 2..7, stage lengths 4 and 2
    # k = 0.3 * 6 / (4 + 2 * 0.5) = 0.36 -> 36 and 18 of 100; mean (4 * 36 + 2 * 18) / 6 = 30
    s = vtprune.get_strategy("pyramiddrop", layers=[2, 6])
    assert per_layer(s.schedule(8, 0.3), 8, 100) == [100, 100, 36, 36, 36, 36, 18, 18]


def test_average_budget_refuses_an_infeasible_keep():
    assert max_average_keep(32) == pytest.approx(7 / 12)
    assert max_average_keep(4, ratio=0.8) == pytest.approx((1 + 0.8 + 0.64) / 3)
    pdrop_schedule(32, max_average_keep(32)).counts(576)  # the maximum itself is feasible
    assert pdrop_schedule(32, max_average_keep(32)).counts(576)[0] == 576
    with pytest.raises(ContractError) as err:
        pdrop_schedule(4, 0.99)  # just below keep-all (keep=1.0 is the identity)
    message = str(err.value)
    assert "at most 58.3%" in message and "keep <= 0.5833" in message
    assert "lower keep" in message and "raise ratio" in message and "budget='first'" in message
    with pytest.raises(ContractError, match="at most 58.3%"):
        pdrop_schedule(32, 0.6)
    with pytest.raises(ContractError, match=r"at most 81\.3%"):  # (1 + .8 + .64) / 3
        pdrop_schedule(4, 0.9, ratio=0.8)
    pdrop_schedule(4, 0.8, ratio=0.8)
    # an int keep is checked against the token count when the schedule meets it
    schedule = pdrop_schedule(4, 100)
    with pytest.raises(ContractError) as err:
        schedule.counts(144)
    message = str(err.value)
    assert "keep=100 tokens" in message and "171 tokens" in message and "58.3%" in message
    assert "budget='first'" in message
    assert schedule.counts(300) == [171, 86, 43]
    with pytest.raises(ContractError, match="58.3%"):
        vtprune.get_strategy("altp_pdrop").schedule(32, 0.75)


def test_unknown_budget_is_refused_naming_the_allowed_values():
    for bad in ("mean", "First", None):
        with pytest.raises(ContractError, match="'average'.*'first'"):
            pdrop_schedule(32, 0.1, budget=bad)
    with pytest.raises(ContractError, match="'average'.*'first'"):
        vtprune.get_strategy("altp_pdrop", budget="last").schedule(32, 0.1)


def test_budget_is_routed_through_get_strategy_for_both_strategies():
    for name in ("pyramiddrop", "altp_pdrop"):
        default = vtprune.get_strategy(name).schedule(32, 0.1).counts(576)
        assert default == vtprune.get_strategy(name, budget="average").schedule(32, 0.1).counts(576)
        assert default == [99, 49, 25]
        assert vtprune.get_strategy(name, budget="first").schedule(32, 0.1).counts(576) == [58, 29, 14]
    s = vtprune.get_strategy("altp_pdrop", budget="first", ratio=0.25, layers=[1, 3])
    assert s.params["budget"] == "first"
    assert s.schedule(4, 0.5).counts(64) == [32, 8]
