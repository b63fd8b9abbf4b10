"""Rows with their own grids (dynamic resolution): crop each row to its grid, embed back.

A context with ``grids`` is a canvas (see :attr:`PruneContext.grids`): row b's tokens fill the
top-left h_b x w_b block of the H x W grid. A strategy whose stages do not all declare
``Capabilities.row_grids`` is run by :func:`run_by_grid`: once per distinct grid, on the rows
of that grid cropped to it, so every row is pruned exactly as it would be alone on its own
grid; the selections are then mapped back to canvas indices. The loop is over distinct grid
shapes (host-known: ``grids`` lives on the CPU), not over samples.

Stages that do declare ``row_grids`` (every built-in) read the canvas in one call; the helpers
here give them each row's own grid without a device read: :func:`budget_groups` and
:func:`block_indices` for host tables per grid and budget, :func:`own_grid_full` for "this row
is whole", :func:`on_own_grids` for maps computed from each row's own pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from .types import PAD_INDEX, PruneContext, Selection, grid_blocks

Grid = tuple[int, int]


def grid_groups(grids: torch.Tensor) -> list[tuple[Grid, torch.Tensor]]:
    """The distinct grids of ``grids`` [B, 2] in order of first appearance, each with its
    row indices (1-D long, CPU, ascending)."""
    groups: dict[Grid, list[int]] = {}
    for row, (h, w) in enumerate(grids.tolist()):  # grids is on the host: no device read
        groups.setdefault((h, w), []).append(row)
    return [(g, torch.tensor(rows, dtype=torch.long)) for g, rows in groups.items()]


def budget_groups(grids: torch.Tensor, budget: torch.Tensor) -> list[tuple[Grid, int, torch.Tensor]]:
    """The distinct (own grid, budget) pairs of a batch, each with its row indices (1-D long,
    CPU, ascending): for stages that build one host table per grid and budget. ``grids``
    [B, 2] and ``budget`` [B] live on the host, so nothing is read from a device."""
    groups: dict[tuple[Grid, int], list[int]] = {}
    for row, (h, w, k) in enumerate(torch.cat([grids, budget.long()[:, None]], dim=1).tolist()):
        groups.setdefault(((h, w), k), []).append(row)
    return [(g, k, torch.tensor(rows, dtype=torch.long)) for (g, k), rows in groups.items()]


def own_grid_full(ctx: PruneContext) -> torch.Tensor:
    """[B] bool on the features' device: every token of the row's own grid is valid (the
    whole grid when the context has no ``grids``)."""
    valid = ctx.valid_mask()
    if ctx.grids is None:
        return valid.all(dim=1)
    return (valid == grid_blocks(ctx.grids, ctx.grid, valid.device)).all(dim=1)


def image_block(image_hw: tuple[int, int], grid: Grid, canvas: Grid) -> tuple[int, int]:
    """(height, width) in pixels of the top-left part of a canvas image of ``image_hw`` that
    holds a row whose own grid is ``grid`` on the ``canvas`` grid."""
    return round(grid[0] * image_hw[0] / canvas[0]), round(grid[1] * image_hw[1] / canvas[1])


def block_indices(grid: Grid, canvas: Grid, device: torch.device | str | None = None) -> torch.Tensor:
    """[h * w] long: the canvas index of each token of an h x w grid placed in the top-left
    block of an H x W canvas, in the grid's raster order (so ascending)."""
    h, w = grid
    rows = torch.arange(h, device=device)[:, None] * canvas[1]
    return (rows + torch.arange(w, device=device)[None, :]).reshape(-1)


def crop(ctx: PruneContext, rows: torch.Tensor, grid: Grid) -> PruneContext:
    """The context of ``rows`` (1-D long) alone on their common own ``grid``: tokens, signals
    and image cut to the top-left block; no ``grids``. New tensors only where cut."""
    dev = ctx.features.device
    r = rows.to(dev)
    idx = block_indices(grid, ctx.grid, dev)

    def tokens(t: torch.Tensor | None) -> torch.Tensor | None:  # [B, ..., N] -> [b, ..., h*w]
        return None if t is None else t.index_select(0, r.to(t.device)).index_select(-1, idx.to(t.device))

    def samples(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, r.to(t.device))

    image = samples(ctx.image)
    if image is not None:  # the row's pixels fill the same top-left fraction of the canvas
        height, width = image_block((int(image.shape[-2]), int(image.shape[-1])), grid, ctx.grid)
        image = image[..., :height, :width]
    feats = ctx.features.index_select(0, r).index_select(1, idx)
    return replace(
        ctx,
        features=feats,
        grid=grid,
        budget=ctx.budget.index_select(0, rows),
        valid=None if ctx.valid is None else tokens(ctx.valid),
        image=image,
        attention=tokens(ctx.attention),
        cls_attention=tokens(ctx.cls_attention),
        text_features=samples(ctx.text_features),
        text_valid=samples(ctx.text_valid),
        text_attention=tokens(ctx.text_attention),
        original_count=None if ctx.original_count is None else grid[0] * grid[1],
        grids=None,
    )


def embed(ctx: PruneContext, parts: list[tuple[torch.Tensor, Grid, Selection]]) -> Selection:
    """One canvas selection from per-grid selections ``(rows, grid, selection)`` whose
    indices count tokens of ``grid``. Merged features of selectors that return none are the
    kept tokens' own features."""
    b, dev = ctx.batch_size, ctx.features.device
    width = max((sel.indices.shape[1] for _, _, sel in parts), default=0)
    indices = torch.full((b, width), PAD_INDEX, dtype=torch.long, device=dev)
    counts = torch.zeros(b, dtype=torch.long)
    merged = any(sel.features is not None for _, _, sel in parts)
    feats = torch.zeros(b, width, ctx.features.shape[-1], dtype=ctx.features.dtype, device=dev) if merged else None
    for rows, grid, sel in parts:
        k = sel.indices.shape[1]
        local = sel.indices.to(dev)
        canvas = torch.where(local >= 0, (local // grid[1]) * ctx.grid[1] + local % grid[1], local)
        r = rows.to(dev)
        indices[r, :k] = canvas
        counts[rows] = sel.counts.cpu()
        if feats is not None:
            own = sel.features
            if own is None:
                picked = ctx.features.index_select(0, r).gather(
                    1, canvas.clamp(min=0)[..., None].expand(-1, -1, feats.shape[-1])
                )
                own = picked * sel.kept_mask.to(dev)[..., None].to(picked.dtype)
            feats[r, :k] = own.to(feats.dtype)
    return Selection(indices=indices, counts=counts, features=feats)


def on_own_grids(
    images: torch.Tensor,
    grids: torch.Tensor,
    canvas: Grid,
    per_grid: Callable[[torch.Tensor, Grid, torch.Tensor], torch.Tensor],
    fill: float | int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """A per-token map of canvas images, computed on each row's own grid.

    For every distinct own grid in ``grids`` [B, 2] (host), ``per_grid(pixels, grid, rows)``
    gets the images [b, C, H, W] of those ``rows`` cut to their top-left block and returns
    [b, h * w] on the images' device; the result [B, canvas tokens] holds those values on each
    row's block and ``fill`` elsewhere. The loop is over grid shapes, not samples, and reads
    nothing from the device."""
    dev = images.device
    out = torch.full((images.shape[0], canvas[0] * canvas[1]), fill, dtype=dtype, device=dev)
    for grid, rows in grid_groups(grids):
        height, width = image_block((int(images.shape[-2]), int(images.shape[-1])), grid, canvas)
        r = rows.to(dev)
        pixels = images.index_select(0, r)[..., :height, :width]
        out[r[:, None], block_indices(grid, canvas, dev)[None, :]] = per_grid(pixels, grid, rows).to(dtype)
    return out


def run_by_grid(ctx: PruneContext, strategy: Callable[[PruneContext], Selection]) -> Selection:
    """``strategy`` on each group of rows sharing a grid, cropped to it; one canvas selection."""
    assert ctx.grids is not None
    groups = grid_groups(ctx.grids)
    if len(groups) == 1 and groups[0][0] == ctx.grid:  # no row is smaller than the canvas
        return strategy(replace(ctx, grids=None))
    return embed(ctx, [(rows, grid, strategy(crop(ctx, rows, grid))) for grid, rows in groups])


__all__ = [
    "grid_groups", "budget_groups", "own_grid_full", "image_block", "block_indices", "on_own_grids", "crop",
    "embed", "run_by_grid",
]
