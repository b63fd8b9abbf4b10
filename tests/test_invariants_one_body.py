"""Each value invariant has one body: the device verdict is False exactly when the host path
raises, on random well- and ill-formed allocations and selections."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtprune.core import Allocation, ContractError, PruneContext, Selection
from vtprune.core.types import (
    allocation_verdict,
    raise_first,
    selection_invariants,
    selection_verdict,
)


def matrix(data, rows: int, cols: int, lo: int, hi: int) -> torch.Tensor:
    return torch.tensor(data.draw(st.lists(st.lists(st.integers(lo, hi), min_size=cols, max_size=cols),
                                           min_size=rows, max_size=rows)))


def context(data, b: int, n: int) -> PruneContext:
    valid = matrix(data, b, n, 0, 1).bool()
    valid[:, 0] = True
    keep = data.draw(st.integers(1, int(valid.sum(1).min())))
    return PruneContext.create(torch.randn(b, n, 2), grid=(1, n), keep=keep, valid=valid)


def raises(fn) -> bool:
    try:
        fn()
    except ContractError:
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_allocation_verdict_is_false_exactly_when_explain_raises(data) -> None:
    b, n, r = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 8)), data.draw(st.integers(1, 4))
    ctx = context(data, b, n)
    valid = ctx.valid_mask()
    regions = matrix(data, b, n, -1, r)
    if data.draw(st.booleans()):  # well-formed ids, so the quota invariants are reached
        regions = torch.where(valid, regions.clamp(0, r - 1), -1)
    alloc = Allocation(budget=ctx.budget.clone(), regions=regions, quotas=matrix(data, b, r, -1, 3))
    on_valid = bool(torch.where(valid, regions >= 0, regions == -1).all())
    assert bool(allocation_verdict(alloc, ctx)) == (on_valid and not raises(alloc.explain))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_selection_verdict_is_false_exactly_when_the_message_path_raises(data) -> None:
    b, n = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 8))
    ctx = context(data, b, n)
    k = int(ctx.budget.max())
    indices = matrix(data, b, k, -2, n)
    if data.draw(st.booleans()):  # sorted rows, so the validity invariant is reached
        indices = indices.sort(dim=1).values
    counts = ctx.budget.clone()
    indices = torch.where(torch.arange(k) < counts[:, None], indices, -1) if data.draw(st.booleans()) else indices
    sel = Selection(indices=indices, counts=counts)
    fine = bool(selection_verdict(sel, ctx))
    assert fine == (not raises(lambda: raise_first(selection_invariants(sel, ctx, None))))
    if not fine:
        with pytest.raises(ContractError, match=r"selection\.indices\[\d+, \d+\] = -?\d+"):
            raise_first(selection_invariants(sel, ctx, None))
