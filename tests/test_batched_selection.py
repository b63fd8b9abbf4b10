"""Batched farthest-point selection (ALTP's spread, DivPrune) picks what the per-sample
numpy references pick, on tie-free inputs: the accelerator kernel and the grouped CPU kernel
of ``spread`` against the per-region reference."""

from __future__ import annotations

import torch
from altp_reference import farthest_point_groups_reference
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vtprune.strategies.altp import farthest_point_groups
from vtprune.strategies.divprune import (
    max_min_diverse,
    max_min_diverse_batched,
    max_min_diverse_reference,
)
from vtprune.strategies.farthest import farthest_points_batched, unit_rows_batched


@st.composite
def grouped(draw):
    b, n, d = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(2, 12))
    r = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, n, d, generator=g) * draw(st.sampled_from([1.0, 300.0]))
    regions = torch.randint(-1, r, (b, n), generator=g)
    sizes = torch.stack([(regions == i).sum(dim=1) for i in range(r)], dim=1)  # [B, R]
    quotas = (torch.rand(b, r, generator=g) * (sizes + 1)).floor().long().clamp(max=sizes)
    prio = torch.randn(b, n, generator=g)  # distinct almost surely: no priority ties
    return feats, regions, quotas, prio


@settings(max_examples=150, deadline=None)
@given(grouped())
def test_spread_picks_equal_the_reference(case):
    feats, regions, quotas, prio = case
    want = farthest_point_groups(feats, regions, quotas, prio)
    got = farthest_points_batched(unit_rows_batched(feats), regions, quotas, prio)
    assert torch.equal(got, want)


@settings(max_examples=150, deadline=None)
@given(grouped())
def test_grouped_cpu_kernel_picks_equal_the_per_region_reference(case):
    feats, regions, quotas, prio = case
    want = farthest_point_groups_reference(feats, regions, quotas, prio)
    assert torch.equal(farthest_point_groups(feats, regions, quotas, prio), want)


def test_grouped_cpu_kernel_takes_the_reference_path_for_non_finite_or_huge_rows():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 30, 8, generator=g)
    feats[0, 5, 2] = float("nan")
    feats[1, 7] *= 1e30  # norm overflows float32 products
    regions = torch.randint(0, 4, (3, 30), generator=g)
    sizes = torch.stack([(regions == i).sum(dim=1) for i in range(4)], dim=1)
    quotas = torch.minimum(torch.tensor([[3, 2, 4, 2]]).expand(3, 4), sizes)
    prio = torch.randn(3, 30, generator=g)
    got = farthest_point_groups(feats, regions, quotas, prio)
    assert torch.equal(got, farthest_point_groups_reference(feats, regions, quotas, prio))
    for i in range(3):  # and each sample alone picks what it picks in the batch
        alone = farthest_point_groups(feats[i : i + 1], regions[i : i + 1], quotas[i : i + 1], prio[i : i + 1])
        assert torch.equal(alone[0], got[i])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 50), st.integers(2, 16), st.integers(0, 2**31 - 1))
def test_divprune_picks_equal_the_reference(b, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, n, d, generator=g)
    valid = torch.rand(b, n, generator=g) > 0.2
    budget = (torch.rand(b, generator=g) * (valid.sum(dim=1) + 1)).floor().long().clamp(max=valid.sum(dim=1))
    # two valid tokens are equally far from their mean direction: a true tie, either is right
    unit = unit_rows_batched(feats)
    mean = torch.nn.functional.normalize((unit * valid[..., None]).sum(dim=1), dim=-1)
    far = torch.where(valid, 1 - (unit * mean[:, None]).sum(-1), -1.0).sort(dim=1, descending=True).values
    assume(bool(((far[:, 0] - far[:, 1]).abs() > 1e-5)[valid.sum(dim=1) >= 2].all()) if n > 1 else True)
    want = max_min_diverse_reference(feats, valid, budget)
    assert torch.equal(max_min_diverse_batched(feats, valid, budget), want)
    assert torch.equal(max_min_diverse(feats, valid, budget), want)  # the CPU kernel (raw rows)


def test_divprune_cpu_kernel_takes_the_reference_path_for_non_finite_or_huge_rows():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(3, 20, 6, generator=g)
    feats[0, 4, 1] = float("inf")
    feats[1, 2] *= 1e30
    valid = torch.ones(3, 20, dtype=torch.bool)
    budget = torch.tensor([5, 7, 3])
    assert torch.equal(max_min_diverse(feats, valid, budget), max_min_diverse_reference(feats, valid, budget))


def test_a_sample_picks_the_same_alone_and_in_a_batch():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 30, 8, generator=g)
    regions = torch.randint(0, 4, (3, 30), generator=g)
    quotas = torch.tensor([[2, 3, 1, 2], [5, 0, 0, 1], [1, 1, 1, 1]])
    prio = torch.randn(3, 30, generator=g)
    batch = farthest_points_batched(unit_rows_batched(feats), regions, quotas, prio)
    for i in range(3):
        alone = farthest_points_batched(unit_rows_batched(feats[i : i + 1]), regions[i : i + 1], quotas[i : i + 1], prio[i : i + 1])
        assert torch.equal(alone[0], batch[i])


@settings(max_examples=100, deadline=None)
@given(grouped())
def test_distinct_scores_batched_equal_the_per_sample_kernel(case):
    """ALTP's scorer on accelerators (one program over the batch) against its CPU kernel,
    with padding, and a sample scores the same alone as in the batch."""
    from vtprune.strategies.altp import _distinct_one, distinct_batched

    feats, regions, _, _ = case
    valid = regions >= 0
    got = distinct_batched(feats, valid)
    want = torch.stack([_distinct_one(feats[b], valid[b]) for b in range(feats.shape[0])])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not got[~valid].any()
    for b in range(feats.shape[0]):
        assert torch.equal(distinct_batched(feats[b : b + 1], valid[b : b + 1])[0], got[b])
