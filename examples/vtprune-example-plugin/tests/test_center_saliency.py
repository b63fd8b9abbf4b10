"""What the ``center_saliency`` scorer promises, on small hand-made inputs."""

from __future__ import annotations

import pytest
import torch
from vtprune_example import center_prior, feature_saliency

import vtprune


def test_registered_through_the_entry_point() -> None:
    assert "center_saliency" in vtprune.list_strategies()
    assert "center_saliency" in vtprune.list_stages("scorer")
    source = vtprune.core.default_registry().source("strategy", "center_saliency")
    assert source.startswith("vtprune-example-plugin")


def test_pure_saliency_keeps_the_token_that_stands_out() -> None:
    features = torch.ones(1, 25, 4)
    features[0, 3] = torch.tensor([1.0, -2.0, 0.5, 3.0])  # one odd token, off-centre
    strategy = vtprune.get_strategy("center_saliency", center_weight=0.0)
    kept = strategy(vtprune.PruneContext.create(features, keep=1))
    assert kept.indices.tolist() == [[3]]


def test_pure_centre_prior_keeps_the_middle_of_the_grid() -> None:
    ctx = vtprune.PruneContext.create(torch.randn(2, 49, 8), keep=9)  # 7 x 7 grid
    kept = vtprune.get_strategy("center_saliency", center_weight=1.0)(ctx)
    middle = [r * 7 + c for r in (2, 3, 4) for c in (2, 3, 4)]
    assert kept.indices.tolist() == [middle, middle]


def test_scores_lie_in_unit_range_and_padding_scores_zero() -> None:
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 10:] = False
    ctx = vtprune.PruneContext.create(torch.randn(2, 16, 5), keep=0.5, valid=valid)
    strategy = vtprune.get_strategy("center_saliency")
    scores = strategy.scores(ctx)
    assert scores.shape == (2, 16) and scores.dtype == torch.float32
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert bool((scores[1, 10:] == 0).all())
    assert bool((strategy(ctx).token_mask(16) <= valid).all())  # padding never kept


def test_bfloat16_features_are_scored_without_being_modified() -> None:
    features = torch.randn(1, 36, 8).to(torch.bfloat16)
    before = features.clone()
    scores = vtprune.get_strategy("center_saliency").scores(
        vtprune.PruneContext.create(features, keep=0.25)
    )
    assert scores.dtype == torch.float32 and torch.equal(features, before)


def test_building_blocks() -> None:
    prior = center_prior(3, 3, 0.25)
    assert int(prior.argmax()) == 4 and float(prior[4]) == pytest.approx(1.0)
    sal = feature_saliency(torch.ones(1, 4, 2), torch.ones(1, 4, dtype=torch.bool))
    assert torch.equal(sal, torch.zeros(1, 4))  # all tokens alike: nothing stands out


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"center_weight": 1.5}, "center_weight must be a float in \\[0, 1\\], got 1.5"),
        ({"sigma": 0.0}, "sigma must be a positive finite float, got 0.0"),
    ],
)
def test_bad_parameters_say_what_was_expected(params: dict, message: str) -> None:
    with pytest.raises(vtprune.ContractError, match=message):
        vtprune.get_strategy("center_saliency", **params)


def test_padding_features_are_never_read() -> None:
    features = torch.randn(1, 16, 4)
    valid = torch.ones(1, 16, dtype=torch.bool)
    valid[0, 12:] = False
    poisoned = features.clone()
    poisoned[0, 12:] = float("nan")  # whatever sits in padding slots must not leak in
    scorer = vtprune.get_strategy("center_saliency").scorer
    clean = scorer(vtprune.PruneContext.create(features, keep=4, valid=valid))
    dirty = scorer(vtprune.PruneContext.create(poisoned, keep=4, valid=valid))
    assert torch.equal(clean, dirty)
