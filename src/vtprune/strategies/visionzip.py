"""VisionZip (Yang et al., arXiv 2412.04467; reference code dvlab-research/VisionZip).

Pre-LLM, training-free. A sample's budget K is split into ``K - C`` *dominant* and ``C``
*contextual* tokens, ``C = round(contextual_ratio * K)`` (half up; default ratio 10/64, which
gives the authors' LLaVA-1.5 settings 54+10 of 64, 108+20 of 128, 162+30 of 192):

1. dominant tokens: the ``K - C`` valid tokens of highest [CLS] attention of the vision
   tower (``ctx.cls_attention``, mean over heads; ties to the lower index) — scorer
   ``cls_attention`` + the selector below;
2. contextual tokens: the ``M`` remaining valid tokens, in raster order, get ``C`` targets at
   ranks ``0, s, 2s, ...`` with ``s = max(1, M // C)`` (the reference's spacing); every other
   remaining token goes to its most similar target (cosine; first maximum = lower target);
   each target's slot carries the merge of its group (``Selection.features``), the dominant
   slots keep their original features.

What is our reading rather than the paper's or the reference code's (see docs/strategies.md):

- similarity is the cosine of ``ctx.features`` (for LLaVA the projected tokens the LLM sees);
  the reference uses the keys of the vision tower's second-to-last layer, mean over heads;
- merging happens after the projector (the reference merges vision-tower hidden states and
  projects the result; the projector is not linear, so the two differ);
- ``merge="mean"`` (default) is the paper's "merge by averaging": the mean over the target and
  the tokens assigned to it. ``merge="target_plus_mean"`` is the reference code's formula,
  target + mean of the tokens assigned to it (the target alone when none is);
- the reference keeps the vision tower's [CLS] token as one of the dominant tokens
  (``dominant=54`` keeps [CLS] + 53 patches); vtprune's LLaVA context holds patch tokens only,
  so all ``K - C`` dominant tokens are patches;
- kept tokens stay at their original positions (the reference concatenates dominant then
  contextual tokens and numbers them contiguously; ``positions="compact"`` is the closest).

Everything is one batched program over the whole batch: per-sample budgets, ragged validity
masks (invalid tokens are never kept, targeted or merged) and a sample's result does not
depend on its batch-mates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..core import (
    PAD_INDEX,
    Allocation,
    Capabilities,
    ContractError,
    PruneContext,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)

CONTEXTUAL_RATIO = 10 / 64
"""The authors' LLaVA-1.5 split: 10 contextual of 64 (20 of 128, 30 of 192)."""
MERGES = ("mean", "target_plus_mean")


def make_cls_attention() -> Scorer:
    """Scorer ``cls_attention``: the vision tower's [CLS] -> patch attention, ``ctx.cls_attention``
    [B, N], or its mean over heads for [B, heads, N] (the reference sums over heads: same order)."""

    def score(ctx: PruneContext) -> torch.Tensor:
        assert ctx.cls_attention is not None
        att = ctx.cls_attention.float()
        out = att.mean(dim=1) if att.dim() == 3 else att
        return out.to(ctx.features.device)

    return score


def split_budget(budget: torch.Tensor, contextual_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dominant, contextual)`` counts [B] long for budgets [B]: contextual =
    ``floor(ratio * K + 0.5)``, dominant = ``K - contextual``."""
    contextual = torch.floor(budget.double() * contextual_ratio + 0.5).long().clamp(min=0)
    contextual = torch.minimum(contextual, budget)
    return budget - contextual, contextual


def visionzip_select(
    features: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    budget: torch.Tensor,
    contextual_ratio: float = CONTEXTUAL_RATIO,
    merge: str = "mean",
) -> Selection:
    """VisionZip for a batch.

    Args:
        features: [B, N, D] token features (similarity and merging).
        scores: [B, N] dominance (e.g. [CLS] attention), higher = dominant first.
        valid: [B, N] bool; budget: [B] long (CPU), ``budget <= valid count``.

    Returns the :class:`Selection` of the dominant and target tokens, ascending, with
    replacement features: the original feature of each dominant token, the merged feature of
    its group on each target (input dtype; computed in float32).
    """
    b, n, d = features.shape
    dev = features.device
    valid = valid.to(dev)
    budget = budget.cpu().long()
    dominant_n, contextual_n = split_budget(budget, contextual_ratio)
    # the one host read: the largest budget; the contextual count grows with the budget, so
    # the largest contextual count follows on the host (same float64 arithmetic)
    k_max = int(budget.max()) if b else 0
    width = min(k_max, math.floor(k_max * contextual_ratio + 0.5))
    dom_k = dominant_n.to(dev)[:, None]
    ctx_k = contextual_n.to(dev)[:, None]
    pos = torch.arange(n, device=dev).expand(b, n)

    # 1. dominant: top (K - C) valid tokens by score, ties to the lower index
    prio = torch.where(valid, scores.float(), -torch.inf)
    order = torch.sort(prio, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, pos)
    dominant = valid & (rank < dom_k)

    # 2. contextual targets: evenly spaced ranks among the remaining tokens (raster order)
    remaining = valid & ~dominant
    m = remaining.sum(dim=1, keepdim=True)  # [B, 1]
    step = torch.clamp(m // ctx_k.clamp(min=1), min=1)
    r = remaining.long().cumsum(dim=1) - 1  # rank among the remaining tokens
    target = remaining & (r % step == 0) & (r // step < ctx_k)
    # slot j of sample b = its j-th target in raster order; `width` collects everyone else
    t_rank = target.long().cumsum(dim=1) - 1
    w = max(width, 1)
    t_order = torch.sort((~target).to(torch.uint8), dim=1, stable=True).indices[:, :w]
    has_slot = torch.arange(w, device=dev)[None, :] < ctx_k  # [B, W]

    # 3. assignment: each other remaining token to its most similar target (cosine). A
    # batched matmul rounds differently with the batch size and the width (the batch's
    # largest contextual count); computed in float64 and rounded to float32, those last-bit
    # differences vanish, so exact ties stay ties and a sample alone assigns as in a batch.
    wide = torch.float32 if dev.type == "mps" else torch.float64  # MPS has no float64
    x = features.detach()
    x_wide = x.to(wide)
    t_unit = F.normalize(x_wide.gather(1, t_order[..., None].expand(-1, -1, d)), dim=-1)  # [B, W, D]
    # a token's own norm does not change which target is nearest: only targets are normalised
    sim = torch.bmm(x_wide, t_unit.transpose(1, 2)).float()  # [B, N, W]
    sim = sim.masked_fill(~has_slot[:, None, :], -torch.inf)
    nearest = sim.argmax(dim=2)  # [B, N], first maximum: the lower target
    merged_in = remaining & ~target & (ctx_k > 0)
    slot = torch.where(target, t_rank, torch.where(merged_in, nearest, width))  # [B, N]

    # 4. merge: per-target group sums in float32 (slot `width` collects the rest)
    xf = x.float()
    sums = torch.zeros(b, width + 1, d, dtype=torch.float32, device=dev)
    sums.scatter_add_(1, slot[..., None].expand(b, n, d), xf)
    count = torch.zeros(b, width + 1, dtype=torch.float32, device=dev)
    count.scatter_add_(1, slot, torch.ones(b, n, dtype=torch.float32, device=dev))
    if merge == "mean":  # the paper: mean over the target and its assigned tokens
        merged = sums / count.clamp(min=1)[..., None]
    else:  # the reference code: target + mean of the tokens assigned to it
        own = xf.gather(1, t_order[:, :width, None].expand(-1, -1, d))  # [B, width, D]
        own = torch.cat([own, torch.zeros(b, 1, d, dtype=torch.float32, device=dev)], dim=1)
        merged = own + (sums - own) / (count - 1).clamp(min=1)[..., None]

    # 5. the selection: kept slots in ascending order; a target slot carries its group's merge
    # (its exact original feature when nothing was assigned to it), the others their own
    kept = dominant | target  # budget[b] tokens per row
    order = torch.where(kept, pos, pos + n).argsort(dim=1)[:, :k_max]  # kept first, ascending
    real = torch.arange(k_max, device=dev)[None, :] < budget.to(dev)[:, None]  # [B, K]
    indices = torch.where(real, order, PAD_INDEX)
    idx = torch.where(real, order, 0)  # [B, K]
    out = x.gather(1, idx[..., None].expand(-1, -1, d))  # [B, K, D]
    slot_k = slot.gather(1, idx)
    merged_k = merged.gather(1, slot_k[..., None].expand(-1, -1, d)).to(x.dtype)
    use = real & target.gather(1, idx) & (count.gather(1, slot_k) > 1)
    out = torch.where(use[..., None], merged_k, out)
    out = torch.where(real[..., None], out, torch.zeros((), dtype=x.dtype, device=dev))
    return Selection(indices=indices, counts=budget.clone(), features=out)


def make_visionzip(contextual_ratio: float = CONTEXTUAL_RATIO, merge: str = "mean") -> Selector:
    """Selector ``visionzip``: dominant tokens by score + contextual tokens merged by similarity.

    Args:
        contextual_ratio: share of each sample's budget given to contextual tokens, in [0, 1];
            ``round(ratio * K)`` (half up). Default 10/64, the authors' LLaVA-1.5 split
            (54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192). 0 = dominant tokens only.
        merge: ``"mean"`` (default, the paper: mean over the target and its assigned tokens)
            or ``"target_plus_mean"`` (the reference code: target + mean of the assigned ones).

    Scores are the dominance priority (scorer ``cls_attention`` in the ``visionzip`` strategy).
    Does not take region quotas.
    """
    if isinstance(contextual_ratio, bool) or not (
        isinstance(contextual_ratio, (int, float)) and math.isfinite(contextual_ratio) and 0 <= contextual_ratio <= 1
    ):
        raise ContractError(
            f"visionzip: contextual_ratio must be a number in [0, 1], got {contextual_ratio!r}; "
            f"the authors' LLaVA-1.5 split is 10/64 = {CONTEXTUAL_RATIO}"
        )
    if merge not in MERGES:
        raise ContractError(f"visionzip: merge must be one of {list(MERGES)}, got {merge!r}")
    ratio = float(contextual_ratio)

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        return visionzip_select(ctx.features, scores, ctx.valid_mask(), alloc.budget, ratio, merge)

    return select


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [
        ScorerSpec(
            "cls_attention",
            make_cls_attention,
            Capabilities(needs=frozenset({"cls_attention"}), row_grids=True),
            description="vision tower [CLS] attention (mean over heads)",
        )
    ]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec(
            "visionzip",
            make_visionzip,
            Capabilities(merges=True, row_grids=True, region_quotas=False),
            description="dominant tokens by score + contextual tokens merged by cosine similarity",
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "visionzip", "cls_attention", "global", "visionzip",
            description="VisionZip: top [CLS]-attention tokens + similarity-merged contextual tokens (pre-LLM)",
            reference="arXiv 2412.04467",
        )
    ]
