"""The batched DDC/DDF quota rule equals the one-sample numpy reference, row by row."""

from __future__ import annotations

import numpy as np
import torch
from altp_reference import allocate_quotas
from hypothesis import given, settings
from hypothesis import strategies as st

from vtprune.strategies.quotas import allocate_quotas_batched


@st.composite
def rows(draw, dyadic: bool):
    r = draw(st.integers(1, 12))
    sizes = draw(st.lists(st.integers(0, 9), min_size=r, max_size=r))
    if dyadic:  # exactly representable: shares tie exactly, the tie rules decide
        dens = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), min_size=r, max_size=r))
    else:
        dens = draw(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=r, max_size=r))
    budget = draw(st.integers(0, sum(sizes)))
    return np.array(sizes, dtype=np.int64), np.array(dens), budget


def batched(cases, min_quota, mode):
    width = max(len(s) for s, _, _ in cases)
    sizes = torch.zeros(len(cases), width, dtype=torch.long)
    dens = torch.zeros(len(cases), width, dtype=torch.float64)
    for i, (s, d, _) in enumerate(cases):
        sizes[i, : len(s)] = torch.from_numpy(s)
        dens[i, : len(d)] = torch.from_numpy(d)
    budget = torch.tensor([b for _, _, b in cases])
    return allocate_quotas_batched(sizes, dens, budget, min_quota, mode)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(rows(dyadic=True), rows(dyadic=False)), min_size=1, max_size=5),
    st.integers(0, 3),
    st.sampled_from(["mass", "size"]),
)
def test_batched_quotas_equal_the_reference(cases, min_quota, mode):
    got = batched(cases, min_quota, mode)
    for i, (sizes, dens, budget) in enumerate(cases):
        want = allocate_quotas(sizes, dens, budget, min_quota, mode)
        assert got[i, : len(sizes)].tolist() == want.tolist(), (sizes, dens, budget)
        assert int(got[i].sum()) == budget and bool((got[i, : len(sizes)] <= torch.from_numpy(sizes)).all())
        assert not got[i, len(sizes):].any()


def test_a_row_does_not_depend_on_its_batch_mates():
    a = (np.array([3, 5, 2]), np.array([0.5, 0.1, 2.0]), 6)
    b = (np.array([9, 9, 9, 9, 9, 9]), np.array([1.0] * 6), 20)
    assert batched([a], 1, "mass")[0, :3].tolist() == batched([b, a], 1, "mass")[1, :3].tolist()
