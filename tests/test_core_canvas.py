"""Rows with their own grids (a canvas): every built-in prunes each row as it would alone."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import ContractError, PruneContext
from vtprune.backbones.image_rows import ImageRows
from vtprune.core.canvas import block_indices, crop, grid_groups
from vtprune.core.types import grid_blocks

GRIDS = [(4, 6), (6, 6), (3, 2), (4, 6)]  # rows 0 and 3 share a grid
CANVAS = (6, 6)


def canvas_context(keep=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = len(GRIDS), CANVAS
    grids = torch.tensor(GRIDS)
    feats = torch.randn(b, h * w, 16, generator=g)
    image = torch.rand(b, 3, h * 14, w * 14, generator=g)
    for row, (gh, gw) in enumerate(GRIDS):  # pixels outside the row's block are zero
        image[row, :, gh * 14 :] = 0
        image[row, :, :, gw * 14 :] = 0
    text = torch.randn(b, 5, 16, generator=g)
    block = grid_blocks(grids, CANVAS)  # the instruction rows' attention: zero off each row's block
    text_att = torch.rand(b, 2, 5, h * w, generator=g).softmax(dim=-1) * block[:, None, None, :]
    ctx = PruneContext.create(
        feats, keep=keep, grid=CANVAS, grids=grids, image=image, text_features=text, text_attention=text_att
    )
    return ctx.with_budget(torch.tensor([max(1, round(keep * gh * gw)) for gh, gw in GRIDS]))


@pytest.mark.parametrize("name", [n for n in vtprune.list_strategies() if n not in ("visionzip",)])
def test_each_row_keeps_what_it_keeps_alone_on_its_grid(name):
    strategy = vtprune.get_strategy(name)
    if strategy.schedule(32, 0.25).points[0].layer is not None and "attention" in strategy.needs:
        pytest.skip("in-LLM attention strategies are covered by the adapter tests")
    ctx = canvas_context()
    rows = strategy(ctx).per_sample()
    for i, grid in enumerate(GRIDS):
        alone = strategy(crop(ctx, torch.tensor([i]), grid)).per_sample()[0]
        assert torch.equal(rows[i], block_indices(grid, CANVAS)[alone]), (name, i)
        assert bool(ctx.valid_mask()[i, rows[i]].all()), "kept a cell outside the row's block"


def test_groups_and_blocks():
    groups = grid_groups(torch.tensor(GRIDS))
    assert [(g, r.tolist()) for g, r in groups] == [((4, 6), [0, 3]), ((6, 6), [1]), ((3, 2), [2])]
    assert block_indices((2, 3), (4, 5)).tolist() == [0, 1, 2, 5, 6, 7]


def test_valid_tokens_outside_a_rows_block_are_refused():
    feats = torch.randn(1, 36, 4)
    with pytest.raises(ContractError, match="outside its own 3x2 grid"):
        PruneContext.create(feats, keep=0.5, grid=(6, 6), grids=torch.tensor([[3, 2]]), valid=torch.ones(1, 36, dtype=torch.bool))
    with pytest.raises(ContractError, match="1 <= h_b <= 6"):
        PruneContext.create(feats, keep=0.5, grid=(6, 6), grids=torch.tensor([[7, 2]]))


def test_image_rows_map_every_visual_token_to_its_image_and_cell():
    # sample 0: a 2x3 image; sample 1: a 1x2 then a 3x1 image
    rows = ImageRows.build(torch.tensor([[2, 3], [1, 2], [3, 1]]), torch.tensor([0, 1, 1]), torch.tensor([6, 5]), torch.device("cpu"))
    assert rows.canvas == (3, 3) and not rows.uniform
    assert rows.vis_row.tolist() == [[0, 0, 0, 0, 0, 0], [1, 1, 2, 2, 2, 0]]
    assert rows.vis_cell[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert rows.vis_cell[1, :5].tolist() == [0, 1, 0, 3, 6]
    assert rows.image_indices(torch.tensor([[0, 4, -1], [0, 1, -1], [3, 6, -1]])).tolist() == [[0, 4, -1], [0, 1, -1], [1, 2, -1]]
    assert rows.budgets(0.5).tolist() == [3, 1, 2]
    with pytest.raises(ContractError, match="image tokens per sample"):
        ImageRows.build(torch.tensor([[2, 3]]), torch.tensor([0]), torch.tensor([5]), torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torch", "skimage"])
def test_superpixels_of_a_canvas_row_are_those_of_the_row_alone(backend):
    from vtprune.strategies.superpixels import token_regions_counted

    ctx = canvas_context()
    segs = [5, 7, 2, 4]
    regions, width = token_regions_counted(ctx.image, CANVAS, segs, ctx.valid_mask(), backend=backend, grids=ctx.grids)
    for i, grid in enumerate(GRIDS):
        alone = crop(ctx, torch.tensor([i]), grid)
        own, own_width = token_regions_counted(alone.image, grid, [segs[i]], alone.valid_mask(), backend=backend)
        block = block_indices(grid, CANVAS)
        assert torch.equal(regions[i, block], own[0]), (backend, i)
        assert bool((regions[i][~ctx.valid_mask()[i]] == -1).all())
        assert width >= own_width
