"""One prune point, as a pure step: (hidden states, layout, signals, plan) in -> (kept hidden
states, kept layout, record) out.

The step puts the visual tokens of a call on the canvas of its image rows (one context row
per image, :class:`~.image_rows.ImageRows`), gathers the signals the strategy needs (the
scoring layer's attention rows, the instruction's states), runs the strategy, and keeps the
survivors in sequence order. It holds no state and touches neither the model nor the cache.

Shapes: B samples, T slots of the current layout, D hidden size; M images, each a row of the
H x W canvas (nc = H * W cells).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..core.errors import ContractError
from ..core.schedule import PrunePoint
from ..core.types import PruneContext
from .attention import instruction_attention, instruction_rows, query_attention
from .image_rows import ImageRows
from .layout import Layout, compact_positions, last_real, take_rows
from .pending import Pending
from .plan import PrunePlan
from .records import PruneRecord


@dataclass(frozen=True)
class Scoring:
    """Where a prune point's attention signals come from: a decoder layer and the states
    entering it ([B, T, D], (cos, sin)) in the point's token layout."""

    layer: Any
    hidden: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


def check_finite(
    feats: torch.Tensor, valid: torch.Tensor, attention: torch.Tensor | None, rows: ImageRows, layer: int | None
) -> None:
    """Refuse non-finite visual states or attention, naming the samples of the batch and the
    images within each (one host sync).

    feats [M, N, D], valid [M, N], attention [M, H, N] or None: one row per image of ``rows``."""
    ok = (torch.isfinite(feats).all(dim=-1) | ~valid).all(dim=1)  # [M]
    if attention is not None:
        ok &= torch.isfinite(attention).all(dim=-1).all(dim=-1)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().cpu()  # image rows
        samples = rows.sample[bad]
        within = bad - rows.first_of_sample()[samples]  # each image's index within its prompt
        images = "; ".join(
            f"sample {int(b)}: image(s) {within[samples == b].tolist()}" for b in samples.unique()
        )
        where = "before the LLM" if layer is None else f"before layer {layer}"
        raise ContractError(
            f"sample(s) {samples.unique().tolist()} of the batch have NaN or inf visual token states "
            f"{where} ({images}, counting each prompt's images from 0; usually NaN/inf in their "
            "pixel_values); check those images — the other samples are fine"
        )


def instruction_states(
    h: torch.Tensor, layout: Layout, is_vis: torch.Tensor, n_visual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's instruction — its real text tokens after its last visual token — as
    states ``h`` [B, T, D] at the prune point: a new tensor [B, W, D], W = T - ``n_visual``
    (the visual tokens every row holds), real rows first in sequence order, padding rows
    zero; and their mask [B, W] bool (rows: :func:`~.attention.instruction_rows`). No host read."""
    order, real = instruction_rows(layout.valid, is_vis, n_visual)
    return take_rows(h, order) * real[..., None].to(h.dtype), real


def prune(
    plan: PrunePlan,
    point: PrunePoint,
    h: torch.Tensor,
    layout: Layout,
    signals: Pending,
    rows: ImageRows,
    scorer: Scoring | None = None,
) -> tuple[torch.Tensor, Layout, PruneRecord]:
    """Run ``plan.strategy`` at ``point`` (one context row per image of ``rows``) and drop the
    tokens it does not keep.

    Args:
        h: [B, T, D] hidden states in ``layout`` (T slots).
        signals: the call's pixels / [CLS] attention the adapter captured.
        scorer: the layer whose attention gives ``attention`` / ``text_attention`` and its
            input (None before the LLM).

    Returns ``(h' [B, T', D], layout', record)``: the survivors in sequence order, each
    sample's kept tokens last (fillers in front), and what was kept.
    """
    start = time.perf_counter()
    b, t, d = h.shape
    m, (gh, gw) = rows.count, rows.canvas
    nc = gh * gw
    is_vis = layout.visual  # [B, T]
    rank = layout.vis_rank.clamp(min=0)
    # each sequence slot's flat place on the canvas of image rows; M * nc = "not visual"
    target = torch.where(is_vis, rows.vis_row.gather(1, rank) * nc + rows.vis_cell.gather(1, rank), m * nc)
    flat_target = target.reshape(-1)
    # Context on the ORIGINAL grids: survivors in their original cells, zeros elsewhere.
    feats = torch.zeros(m * nc + 1, d, dtype=h.dtype, device=h.device)
    feats.index_copy_(0, flat_target, h.reshape(b * t, d))
    feats = feats[: m * nc].view(m, nc, d)
    valid = torch.zeros(m * nc + 1, dtype=torch.bool, device=h.device)
    valid.index_fill_(0, flat_target, True)
    valid = valid[: m * nc].view(m, nc)
    att_full = None
    if "attention" in plan.needs and scorer is not None:  # the last token's row: [B, H, T] -> [M, H, nc]
        attention = query_attention(
            scorer.layer, scorer.hidden, scorer.position_embeddings, last_real(layout.valid), layout.valid
        )
        heads = attention.shape[1]
        att_full = torch.zeros(m * nc + 1, heads, dtype=attention.dtype, device=attention.device)
        att_full.index_copy_(0, flat_target, attention.transpose(1, 2).reshape(b * t, heads))
        att_full = att_full[: m * nc].view(m, nc, heads).transpose(1, 2).contiguous()
    check_finite(feats, valid, att_full, rows, point.layer)
    sample = rows.sample.to(h.device)
    text, text_valid = None, None
    if "text_features" in plan.needs:
        fewest = int(is_vis.sum(dim=1).min())  # visual tokens every sample still holds
        text, text_valid = instruction_states(h, layout, is_vis, fewest)
        text, text_valid = text.index_select(0, sample), text_valid.index_select(0, sample)
    # text_attention (SparseVLM): the instruction rows' attention at this layer, on the
    # canvas; its rows are those of instruction_states, so text_valid is the same mask
    text_att = None
    if "text_attention" in plan.needs and scorer is not None:
        fewest_vis = int(is_vis.sum(dim=1).min())
        text_att, att_real = instruction_attention(
            scorer.layer, scorer.hidden, scorer.position_embeddings, layout.valid,
            is_vis, fewest_vis, flat_target, m, nc,
        )
        text_valid = att_real.index_select(0, sample)
    budget = rows.budgets(point.keep)
    ctx = PruneContext(
        features=feats,
        grid=(gh, gw),
        budget=budget,
        valid=None if rows.uniform and layout.stage == 0 else valid,  # nothing pruned yet: all valid
        image=signals.image,
        attention=att_full,
        cls_attention=signals.cls_attention,
        text_features=text,
        layer=point.layer,
        original_count=nc,
        text_valid=text_valid,
        grids=None if rows.uniform else rows.grids,
        text_attention=text_att,
    )
    sel = plan.strategy(ctx)
    counts = sel.counts.cpu()
    if not bool((counts == budget).all()):
        raise ContractError(
            f"strategy {plan.strategy.name!r} kept {counts.tolist()} tokens per image at "
            f"layer {point.layer}; the budget is {budget.tolist()}"
        )
    kept = torch.cat([sel.token_mask(nc).reshape(-1), torch.zeros(1, dtype=torch.bool, device=h.device)])
    keep = torch.where(is_vis, kept[target], layout.slots >= 0)  # [B, T]; old fillers go
    t_new = int(keep.sum(dim=1).max())
    pos = torch.arange(t, device=h.device).expand(b, t)
    # dropped tokens sort first, so the last t_new slots hold each sample's kept tokens in
    # order, after as many dropped ones (fillers) as the sample keeps fewer than t_new
    idx = torch.where(keep, pos + t, pos).argsort(dim=1)[:, t - t_new :]  # [B, T']
    real = keep.gather(1, idx)
    h_new = take_rows(h, idx)
    vis_rank = torch.where(real, layout.vis_rank.gather(1, idx), -1)
    if sel.features is not None:  # merging strategies replace the kept tokens' states
        merged = torch.zeros(m * nc + 1, d, dtype=h_new.dtype, device=h.device)
        flat_kept = torch.where(sel.kept_mask, sel.indices + torch.arange(m, device=h.device)[:, None] * nc, m * nc)
        merged.index_copy_(0, flat_kept.reshape(-1), sel.features.reshape(-1, d).to(h_new.dtype))
        new_target = target.gather(1, idx)
        h_new = torch.where((vis_rank >= 0)[..., None], merged[new_target], h_new)
    slots = torch.where(real, layout.slots.gather(1, idx), -1)
    r = layout.original_pos.shape[0]
    original_pos = layout.original_pos.gather(2, idx[None].expand(r, b, t_new))
    new_valid = layout.valid.gather(1, idx) & real
    compact = plan.schedule.positions == "compact"
    position_ids = compact_positions(original_pos, slots, new_valid) if compact else original_pos
    new = replace(
        layout, slots=slots, valid=new_valid, vis_rank=vis_rank, original_pos=original_pos,
        position_ids=position_ids, stage=layout.stage + 1,
    )
    length = layout.length
    new_index = torch.full((b, length + 1), -1, dtype=torch.long, device=slots.device)
    new_index.scatter_(1, torch.where(real, slots, length), torch.arange(t_new, device=slots.device)[None].expand(b, t_new))
    record = PruneRecord(
        layer=point.layer,
        indices=rows.image_indices(sel.indices.detach()).clone(),
        counts=counts.clone(),
        original_count=nc,
        kept_positions=slots,
        new_index=new_index[:, :length],
        position_ids=position_ids if r > 1 else position_ids[0],
        seconds=time.perf_counter() - start,
        image_sample=rows.sample.clone(),
        grids=rows.grids.clone(),
    )
    return h_new, new, record
