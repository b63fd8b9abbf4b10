"""Schedules: where pruning happens and how many tokens survive each point."""

from __future__ import annotations

import pytest

from vtprune.core import ContractError, PrunePoint, Schedule, pre_llm_schedule


def test_points_count_from_the_original_number_with_the_budget_rule():
    schedule = Schedule.at_layers([(8, 0.5), (16, 0.25), (24, 0.125)])
    assert schedule.counts(576) == [288, 144, 72]
    assert schedule.positions == "original"
    assert PrunePoint(None, 0.5).count(5) == 3
    assert PrunePoint(2, 10).count(576) == 10


def test_pre_llm_schedule():
    schedule = pre_llm_schedule(32, 0.25)
    assert schedule.points == (PrunePoint(None, 0.25),)
    assert Schedule.pre_llm(64, positions="compact").positions == "compact"


@pytest.mark.parametrize(
    "points, message",
    [
        ((), "needs at least one PrunePoint"),
        ((PrunePoint(16, 0.5), PrunePoint(8, 0.25)), "strictly increasing layer order"),
        ((PrunePoint(8, 0.5), PrunePoint(8, 0.25)), "strictly increasing layer order"),
        ((PrunePoint(-1, 0.5),), "prune layers must be >= 0"),
    ],
)
def test_bad_schedules_are_rejected(points, message):
    with pytest.raises(ContractError, match=message):
        Schedule(points)


def test_positions_must_be_original_or_compact():
    with pytest.raises(ContractError, match="positions must be 'original' or 'compact', got 'renumber'"):
        Schedule.pre_llm(0.5, positions="renumber")  # type: ignore[arg-type]


def test_counts_must_not_grow_and_layers_must_exist():
    with pytest.raises(ContractError, match=r"must not grow along a schedule, got \[144, 288\]"):
        Schedule.at_layers([(2, 0.25), (4, 0.5)]).counts(576)
    with pytest.raises(ContractError, match="keep=11 tokens is out of range for 10 tokens"):
        Schedule.at_layers([(2, 11)]).counts(10)
    with pytest.raises(ContractError, match=r"prune layers \[32\] do not exist in a model with 32"):
        Schedule.at_layers([(8, 0.5), (32, 0.25)]).check_depth(32)
    Schedule.at_layers([(8, 0.5), (31, 0.25)]).check_depth(32)
