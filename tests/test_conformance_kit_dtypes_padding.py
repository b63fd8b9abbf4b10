"""Issue #12 items 5 and 10: the kit draws float16 inputs, and rejects NaN scores on padding.

Each broken strategy here passes the kit as it was before these items (float32/bfloat16 only,
NaN on padding accepted) and is caught by exactly the new capability."""

from __future__ import annotations

import torch
from hypothesis import Phase

from vtprune.conformance_tests import check_strategy
from vtprune.core import Capabilities, PruneContext, Strategy
from vtprune.strategies import stages

NO_SHRINK = {"phases": [Phase.explicit, Phase.generate]}

_COMPUTE = {torch.float32: torch.float32, torch.bfloat16: torch.float32}
"""The bug: the author mapped only the dtypes they tried; float16 raises KeyError."""


def fp16_unaware_scorer(ctx: PruneContext) -> torch.Tensor:
    """Feature norm, computed in a dtype looked up from a table that forgets float16."""
    f = ctx.features.to(_COMPUTE[ctx.features.dtype])  # [B, N, D]
    return f.norm(dim=-1).masked_fill(~ctx.valid_mask(), 0.0)  # [B, N]


def nan_padding_scorer(ctx: PruneContext) -> torch.Tensor:
    """Feature norm, with NaN written on padding tokens (the docs allowed 'anything')."""
    norm = ctx.features.float().norm(dim=-1)  # [B, N]
    return norm.masked_fill(~ctx.valid_mask(), float("nan"))


def _strategy(name: str, scorer) -> Strategy:
    return Strategy(
        name=name,
        scorer=scorer,
        allocator=stages.make_global(),
        selector=stages.make_topk(),
        capabilities=Capabilities(),
    )


def _failed(strategy: Strategy, examples: int = 30) -> set[str]:
    results = check_strategy(strategy, examples, settings=NO_SHRINK)
    return {r.check for r in results if r.status == "failed"}


def test_kit_catches_a_scorer_that_cannot_take_float16() -> None:
    failed = _failed(_strategy("fp16_unaware", fp16_unaware_scorer))
    assert failed, "no check drew a float16 context"


def test_kit_catches_nan_scores_on_padding() -> None:
    failed = _failed(_strategy("nan_padding", nan_padding_scorer))
    assert failed == {"check_scores_contract"}


def test_controls_pass() -> None:
    def inf_padding(ctx: PruneContext) -> torch.Tensor:
        norm = ctx.features.float().norm(dim=-1)
        return norm.masked_fill(~ctx.valid_mask(), float("-inf"))

    assert _failed(_strategy("inf_padding", inf_padding)) == set()


def same_width_text_scorer(ctx: PruneContext) -> torch.Tensor:
    """Text relevance as features @ text^T: silently assumes D_text == D (item 8)."""
    assert ctx.text_features is not None
    f = ctx.features.float()  # [B, N, D]
    t = ctx.text_features.float()  # [B, T, D_text]
    rel = (f @ t.transpose(1, 2)).amax(dim=-1)  # [B, N]; needs D_text == D
    return rel.masked_fill(~ctx.valid_mask(), 0.0)


def test_kit_catches_a_scorer_that_assumes_text_width_equals_feature_width() -> None:
    strategy = Strategy(
        name="same_width_text",
        scorer=same_width_text_scorer,
        allocator=stages.make_global(),
        selector=stages.make_topk(),
        capabilities=Capabilities(needs=frozenset({"text_features"})),
    )
    assert _failed(strategy), "no check drew a text width different from D"
