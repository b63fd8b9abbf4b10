"""Baselines ``pool`` (grid average pooling, merging) and ``divprune`` (max-min diversity)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vtprune
from vtprune.core import ContractError
from vtprune.strategies.pooling import grid_cells


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 30), frac=st.floats(0.0001, 1))
def test_pool_cells_are_exactly_budget_non_empty_and_even(h, w, frac):
    k = max(1, round(frac * h * w))
    cells = grid_cells(h, w, k)
    sizes = torch.bincount(cells, minlength=k)
    assert cells.shape == (h * w,) and int(cells.max()) == k - 1
    assert bool((sizes >= 1).all())
    # each cell is a rectangle of the grid
    grid = cells.view(h, w)
    for c in range(k):
        rows, cols = (grid == c).nonzero(as_tuple=True)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_pool_features_are_cell_means_and_indices_are_cell_centres():
    feats = torch.arange(16, dtype=torch.float32).view(1, 16, 1).repeat(1, 1, 2)
    ctx = vtprune.PruneContext.create(feats, grid=(4, 4), keep=4)
    sel = vtprune.get_strategy("pool")(ctx)
    # 2 x 2 cells; cell (0, 0) holds tokens 0, 1, 4, 5 -> mean 2.5
    assert sel.features[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    for idx, mean in zip(sel.indices[0].tolist(), [2.5, 4.5, 10.5, 12.5]):
        assert idx in {0, 1, 4, 5} if mean == 2.5 else True
    assert sel.indices[0].tolist() == [0, 2, 8, 10]  # nearest the centre, ties -> lower index


def test_pool_keep_all_is_identity_and_dtype_is_preserved():
    feats = torch.randn(2, 12, 5).to(torch.bfloat16)
    ctx = vtprune.PruneContext.create(feats, grid=(3, 4), keep=1.0)
    sel = vtprune.get_strategy("pool")(ctx)
    assert sel.indices.tolist() == [list(range(12))] * 2
    assert sel.features.dtype == torch.bfloat16 and torch.equal(sel.features, feats)


def test_pool_ragged_sample_pools_runs_of_valid_tokens():
    valid = torch.tensor([[True, False, True, True, False, True, True, True, True]])
    feats = torch.arange(9, dtype=torch.float32).view(1, 9, 1)
    ctx = vtprune.PruneContext.create(feats, grid=(3, 3), keep=3, valid=valid)
    sel = vtprune.get_strategy("pool")(ctx)
    assert sel.counts.tolist() == [3]
    assert bool(valid[0, sel.indices[0]].all())
    # valid tokens 0,2,3 | 5,6 | 7,8 (runs of 3/2/2) -> means 5/3, 5.5, 7.5
    assert sel.features[0, :, 0].tolist() == pytest.approx([5 / 3, 5.5, 7.5])


def test_pool_rejects_region_quotas():
    with pytest.raises(ContractError, match="'ddc' splits the budget into region quotas, which selector 'pool'"):
        vtprune.compose("constant", "ddc", "pool")


def test_divprune_picks_one_token_per_cluster():
    centres = torch.eye(4) * 3
    feats = centres.repeat_interleave(5, dim=0) + 0.05 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    ctx = vtprune.PruneContext.create(feats[perm][None], grid=(4, 5), keep=4)
    kept = vtprune.get_strategy("divprune")(ctx).indices[0]
    clusters = {int(perm[i]) // 5 for i in kept}
    assert clusters == {0, 1, 2, 3}


def test_divprune_max_min_greedy_definition():
    torch.manual_seed(0)
    feats = torch.randn(1, 30, 6)
    ctx = vtprune.PruneContext.create(feats, grid=(5, 6), keep=6)
    kept = vtprune.get_strategy("divprune")(ctx).indices[0].tolist()
    f = torch.nn.functional.normalize(feats[0], dim=-1)
    dist = 1 - f @ f.T
    first = int((1 - f @ torch.nn.functional.normalize(f.sum(0), dim=0)).argmax())
    chosen = [first]
    while len(chosen) < 6:
        mind = dist[:, chosen].min(dim=1).values
        mind[chosen] = -1
        chosen.append(int(mind.argmax()))
    assert kept == sorted(chosen)


def test_divprune_is_scale_invariant_and_keeps_all_on_full_budget():
    feats = torch.randn(1, 25, 8, generator=torch.Generator().manual_seed(3))
    a = vtprune.get_strategy("divprune")(vtprune.PruneContext.create(feats, keep=7)).indices
    b = vtprune.get_strategy("divprune")(vtprune.PruneContext.create(feats * 5.0, keep=7)).indices
    assert torch.equal(a, b)
    full = vtprune.get_strategy("divprune")(vtprune.PruneContext.create(feats, keep=1.0))
    assert full.indices.tolist() == [list(range(25))]


@pytest.mark.parametrize("name", ["pool", "divprune", "pyramiddrop"])
def test_conformance_kit(name):
    kit = pytest.importorskip("vtprune.conformance_tests")
    results = kit.check_strategy(name, max_examples=20)
    failed = [r for r in results if r.status == "failed"]
    assert not failed, "\n".join(r.message for r in failed)
    if name == "pool":
        assert vtprune.get_strategy("pool").capabilities.merges
