"""DART (Wen et al., arXiv 2502.11494; reference code ZichenWen1/DART).

In-LLM, training-free, once before decoder layer K (default 2, the authors' LLaVA setting):

1. pivots: the ``min(pivots, K_b)`` valid tokens of largest L1 norm (scorer ``l1_norm``,
   ties to the lower index); default 4, the authors' ``pivot_image_token``;
2. the rest of the budget, ``K_b - P_b``, is split evenly over the pivots (the first pivots in
   raster order take one more when it does not divide); pivot by pivot in raster order, each
   takes its share of the tokens *least* similar to it (cosine, ties to the lower index) among
   the valid tokens nobody has taken yet — tokens that duplicate a pivot are taken last;
3. kept: the pivots and everything they took, at original positions.

The loop runs over the (few, fixed) pivots, each step one batched program over the whole
batch; per-sample budgets and ragged masks work and a sample never sees its batch-mates.

Where our reading differs from the reference code (see docs/strategies.md):

- pivot norm: the reference ranks image tokens by the L1 norm of layer K-1's *keys*; vtprune's
  context holds the hidden states entering layer K, so the norm is of those (``l1_norm`` on
  ``ctx.features``);
- similarity: the reference takes cosines of the hidden states after the model's final RMSNorm;
  we use the raw hidden states (the per-token RMS scale cancels in a cosine, the learned
  per-channel weight does not);
- text pivots: the reference also picks 4 pivots among the text tokens (largest key norm), which
  take their share of image tokens but are not kept as image tokens. vtprune's adapters do not
  yet hand the instruction's states to a strategy (issue #14), so all pivots are image tokens;
- counts: the reference takes ``max_num_trunction // (image + text pivots)`` tokens per pivot
  on top of the image pivots (4 + 8 * 16 = 132 for "128"); we keep exactly the budget, pivots
  included;
- pivot order: the reference iterates a Python set of token indices (for small ints, ascending
  order); we go in ascending position explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..core import (
    Allocation,
    ContractError,
    Keep,
    PruneContext,
    Schedule,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)

PIVOTS = 4
"""The authors' ``pivot_image_token`` for LLaVA-1.5."""


def make_l1_norm() -> Scorer:
    """Scorer ``l1_norm``: L1 norm of each token's feature vector (DART's pivot criterion)."""

    def score(ctx: PruneContext) -> torch.Tensor:
        return torch.linalg.vector_norm(ctx.features.detach(), ord=1, dim=-1, dtype=torch.float32)

    return score


def dart_schedule(num_layers: int, keep: Keep, layer: int = 2) -> Schedule:
    """Prune once before decoder layer ``layer`` (DART's K; default 2, the authors' LLaVA
    setting), keeping ``keep`` of the original visual tokens."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_layers:
        raise ContractError(
            f"DART prunes before layer K with 1 <= K < {num_layers} (the model's depth); got "
            f"layer={layer!r}"
        )
    return Schedule.at_layers([(layer, keep)])


def dart_select(
    features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor, pivots: int = PIVOTS
) -> torch.Tensor:
    """DART for a batch: [B, N] bool, ``budget[b]`` valid tokens kept per row.

    Args:
        features: [B, N, D] (cosine similarity); scores: [B, N] pivot priority (higher first);
        valid: [B, N] bool; budget: [B] long, ``<= valid count``; pivots: pivots per sample.
    """
    b, n, _ = features.shape
    dev = features.device
    valid = valid.to(dev)
    k = budget.to(dev).long()[:, None]  # [B, 1]
    pos = torch.arange(n, device=dev).expand(b, n)

    # pivots: the top min(pivots, K) valid tokens by score, ties to the lower index
    p = torch.clamp(k, max=pivots)  # [B, 1]
    order = torch.sort(torch.where(valid, scores.float(), -torch.inf), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, pos)
    is_pivot = valid & (rank < p)
    kept = is_pivot.clone()
    pool = valid & ~is_pivot
    # pivot j of a sample = its j-th pivot in raster order; quotas split K - P evenly
    piv_index = torch.sort(torch.where(is_pivot, pos, n), dim=1).values[:, :pivots]  # [B, pivots]
    extra = k - p
    base = extra // p.clamp(min=1)
    rest = extra - base * p.clamp(min=1)
    unit = F.normalize(features.detach().float(), dim=-1)  # [B, N, D]
    at = piv_index.clamp(max=n - 1)  # [B, pivots] (padding columns of small budgets: quota 0)
    for j in range(min(pivots, n)):
        quota = torch.where(j < p, base + (j < rest).long(), 0)  # [B, 1]
        piv = unit.gather(1, at[:, j, None, None].expand(-1, 1, unit.shape[2]))  # [B, 1, D]
        # cosine as an elementwise product and a row sum, not a batched matmul: bmm rounds
        # differently for a batch of one and a larger batch, which flips exact ties
        cos = (unit * piv).sum(dim=-1)  # [B, N]
        prio = torch.where(pool, -cos, -torch.inf)
        take_order = torch.sort(prio, dim=1, descending=True, stable=True).indices
        take_rank = torch.empty_like(take_order).scatter_(1, take_order, pos)
        take = pool & (take_rank < quota)
        kept |= take
        pool &= ~take
    return kept


def make_dart(pivots: int = PIVOTS) -> Selector:
    """Selector ``dart``: pivots by score, then the tokens least similar to each pivot.

    Args:
        pivots: pivot tokens per sample (>= 1; default 4, the authors' ``pivot_image_token``).
            A sample whose budget is smaller keeps ``budget`` pivots and nothing else.

    Scores are the pivot priority (scorer ``l1_norm`` in the ``dart`` strategy). Does not take
    region quotas.
    """
    if isinstance(pivots, bool) or not isinstance(pivots, int) or pivots < 1:
        raise ContractError(f"dart: pivots must be an int >= 1, got {pivots!r}; the authors use 4")

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        if alloc.regions is not None:
            raise ContractError(
                "selector 'dart' does not support region quotas; compose it with the 'global' allocator"
            )
        return Selection.from_mask(dart_select(ctx.features, scores, ctx.valid_mask(), alloc.budget, pivots))

    return select


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [ScorerSpec("l1_norm", make_l1_norm, description="L1 norm of token features")]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec(
            "dart", make_dart, description="pivots by score + the tokens least similar to each pivot"
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "dart", "l1_norm", "global", "dart",
            schedule=dart_schedule,
            description="DART: pivots by L1 norm, keep the tokens least duplicating them, before layer K",
            reference="arXiv 2502.11494",
        )
    ]
