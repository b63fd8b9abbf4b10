"""The one budget rounding rule: ``keep_count`` and per-sample ``budgets``."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtprune.core import ContractError, budgets, keep_count


@pytest.mark.parametrize(
    "keep, n, expected",
    [
        (0.5, 5, 3),  # 2.5 rounds half up
        (0.5, 4, 2),
        (0.1, 576, 58),  # 57.6
        (0.25, 576, 144),
        (0.125, 576, 72),
        (0.3, 5, 2),  # 1.5 -> 2 although 0.3 * 5 is 1.4999... in binary
        (0.009, 1500, 14),  # 13.5 -> 14 although 0.009 * 1500 is 13.4999... in binary
        (0.102, 1250, 128),  # 127.5
        (0.0, 576, 0),
        (1.0, 576, 576),
        (1.0, 0, 0),
        (0.7, 0, 0),
        (1e-9, 576, 0),
    ],
)
def test_ratio_rounds_half_up(keep, n, expected):
    assert keep_count(keep, n) == expected


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(0, 1000), st.integers(0, 4000))
def test_ratio_matches_exact_decimal_half_up(thousandths, n):
    ratio = thousandths / 1000
    exact = Fraction(thousandths, 1000) * n
    assert keep_count(ratio, n) == math.floor(exact + Fraction(1, 2))


def test_int_is_a_count_and_float_a_ratio():
    assert keep_count(1, 576) == 1  # one token, not "everything"
    assert keep_count(1.0, 576) == 576
    assert keep_count(0, 576) == 0
    assert keep_count(576, 576) == 576
    assert keep_count(np.int64(7), 10) == 7
    assert keep_count(np.float32(0.5), 10) == 5


@pytest.mark.parametrize("bad", [True, False])
def test_bool_is_rejected(bad):
    with pytest.raises(ContractError, match="int token count or a float ratio"):
        keep_count(bad, 10)


@pytest.mark.parametrize("bad", ["0.5", None, torch.tensor(0.5), [3]])
def test_non_numbers_are_rejected_naming_the_type(bad):
    with pytest.raises(ContractError, match=type(bad).__name__):
        keep_count(bad, 10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 1.5])
def test_bad_ratios_are_rejected(bad):
    with pytest.raises(ContractError, match=r"finite float in \[0, 1\]"):
        keep_count(bad, 10)


@pytest.mark.parametrize("bad", [-1, 11, 577])
def test_out_of_range_counts_are_rejected_with_a_hint(bad):
    with pytest.raises(ContractError, match=r"out of range for 10 tokens; pass a count in \[0, 10\]"):
        keep_count(bad, 10)


def test_negative_token_count_is_rejected():
    with pytest.raises(ContractError, match="n must be >= 0"):
        keep_count(0.5, -1)


def test_budgets_apply_one_rule_per_sample():
    counts = torch.tensor([576, 575, 0])
    assert budgets(0.5, counts).tolist() == [288, 288, 0]
    assert budgets(0, counts).tolist() == [0, 0, 0]
    assert budgets(torch.tensor([0.5, 1.0, 0.0]), counts).tolist() == [288, 575, 0]
    assert budgets(torch.tensor([10, 20, 0]), counts).tolist() == [10, 20, 0]
    # float32 tensors (torch's default) follow the same rule as Python floats: 0.7 of 5 is 3.5 -> 4
    assert budgets(torch.tensor([0.7, 0.3, 0.5]), torch.tensor([5, 5, 5])).tolist() == [4, 2, 3]
    assert budgets(torch.tensor([0.7], dtype=torch.float64), torch.tensor([5])).tolist() == [4]
    out = budgets(0.25, counts)
    assert out.dtype == torch.long and out.device.type == "cpu"


def test_budgets_reject_bad_per_sample_keeps():
    counts = torch.tensor([4, 4])
    with pytest.raises(ContractError, match="length B=2"):
        budgets(torch.tensor([1, 2, 3]), counts)
    with pytest.raises(ContractError, match="out of range for 4 tokens"):
        budgets(torch.tensor([1, 5]), counts)
    with pytest.raises(ContractError, match="bool"):
        budgets(torch.tensor([True, False]), counts)
    with pytest.raises(ContractError, match="finite float"):
        budgets(torch.tensor([0.5, float("nan")]), counts)
