"""FastV (Chen et al., arXiv 2403.06764; reference code pkunlp-icler/FastV).

Before decoder layer K (default 2), score each visual token by the attention it receives from
the last token of the sequence at layer K-1, averaged over heads; keep the top
``round((1 - R) * N)`` (default keep 50%) in original order, with original positions.

Differences from the reference code, on purpose: scores are computed per sample (the reference
reads batch element 0 only), padding masks are respected, and the attention row is recomputed
from layer K-1's inputs so SDPA stays on (the backbone adapter supplies it as
``ctx.attention``). With the KV cache, pruning happens at prefill only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..core import (
    Capabilities,
    ContractError,
    Keep,
    PruneContext,
    Schedule,
    Scorer,
    ScorerSpec,
    StrategySpec,
    hookimpl,
)


def make_attention() -> Scorer:
    """Scorer ``attention``: ``ctx.attention`` [B, N] or its mean over heads [B, heads, N]."""

    def score(ctx: PruneContext) -> torch.Tensor:
        assert ctx.attention is not None
        att = ctx.attention.float()
        return att.mean(dim=1) if att.dim() == 3 else att

    return score


def fastv_schedule(num_layers: int, keep: Keep, layer: int = 2) -> Schedule:
    """Prune once before decoder layer ``layer`` (FastV's K, >= 1), keeping ``keep``."""
    if not 1 <= layer < num_layers:
        raise ContractError(
            f"FastV prunes before layer K with 1 <= K < {num_layers} (the model's depth); got "
            f"layer={layer}"
        )
    return Schedule.at_layers([(layer, keep)])


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [
        ScorerSpec(
            "attention",
            make_attention,
            Capabilities(needs=frozenset({"attention"}), row_grids=True),
            description="attention received from the query token (mean over heads)",
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "fastv", "attention", "global", "topk",
            schedule=fastv_schedule,
            description="top attention from the last token at layer K-1, pruned before layer K",
            reference="arXiv 2403.06764",
        )
    ]
