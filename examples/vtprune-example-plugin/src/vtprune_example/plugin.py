"""The plugin module named by the entry point: one scorer and one strategy.

Scorer ``center_saliency``: ``scorer(ctx) -> scores [B, N]`` (float32, finite, higher = keep)::

    saliency[b, j] = 1 - cos(features[b, j], mean of sample b's valid features)
    saliency       = min-max normalised to [0, 1] over each sample's valid tokens
    prior[j]       = exp(-d_j^2 / (2 sigma^2)), d_j = distance of token j's cell centre
                     from the image centre (image-relative units: the image spans [-0.5, 0.5])
    score          = (1 - center_weight) * saliency + center_weight * prior

Tokens that stand out from the image's average feature (objects against background) score
high; the centre prior breaks ties towards where photographers put their subject. Each sample
is scored on its own, so results do not depend on the rest of the batch. Padding tokens
(``ctx.valid`` False) score 0 and are never kept by the selectors.

Strategy ``center_saliency``: this scorer + vtprune's built-in ``global`` allocator and
``topk`` selector, pruning before the LLM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import lru_cache

import torch

from vtprune import Capabilities, ContractError, PruneContext, ScorerSpec, StrategySpec, hookimpl


def feature_saliency(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cosine distance of each token to its sample's mean valid feature, in [0, 1] per sample.

    ``features`` [B, N, D] (any float dtype), ``valid`` [B, N] bool -> [B, N] float32; 0 on
    invalid tokens and for samples whose valid tokens all score the same.
    """
    keep = valid.unsqueeze(-1)                                        # [B, N, 1]
    f = torch.where(keep, features.float(), 0.0)                      # [B, N, D], padding -> 0
    mean = f.sum(dim=1) / keep.sum(dim=1).clamp_min(1)                # [B, D]
    sal = 1.0 - torch.nn.functional.cosine_similarity(f, mean.unsqueeze(1), dim=-1)  # [B, N]
    inf = torch.tensor(math.inf, device=f.device)
    lo = torch.where(valid, sal, inf).amin(dim=1, keepdim=True)      # [B, 1]
    hi = torch.where(valid, sal, -inf).amax(dim=1, keepdim=True)     # [B, 1]
    span = hi - lo
    norm = torch.where(span > 0, (sal - lo) / torch.where(span > 0, span, 1.0), 0.0)
    return torch.where(valid, norm, 0.0)


@lru_cache(maxsize=64)
def center_prior(h: int, w: int, sigma: float) -> torch.Tensor:
    """Gaussian centre prior over an h x w token grid, [h * w] float32 in (0, 1], raster order."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5       # [h]
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5       # [w]
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2                          # [h, w]
    return torch.exp(-d2 / (2.0 * sigma**2)).flatten()


def make_center_saliency(
    center_weight: float = 0.3, sigma: float = 0.25
) -> Callable[[PruneContext], torch.Tensor]:
    """Build the ``center_saliency`` scorer.

    Args:
        center_weight: weight of the centre prior in [0, 1]; 0 = pure feature saliency,
            1 = pure centre prior (a content-blind "keep the middle" baseline).
        sigma: width of the Gaussian prior in image-relative units (> 0); the image spans
            [-0.5, 0.5] on both axes, so 0.25 weights corners by about 0.02.
    """
    if isinstance(center_weight, bool) or not 0.0 <= float(center_weight) <= 1.0:
        raise ContractError(
            f"center_saliency: center_weight must be a float in [0, 1], got {center_weight!r}; "
            "use 0 for pure saliency, 1 for the centre prior alone"
        )
    if not (math.isfinite(float(sigma)) and float(sigma) > 0.0):
        raise ContractError(
            f"center_saliency: sigma must be a positive finite float, got {sigma!r}; "
            "0.25 (the default) suits most images"
        )
    cw, sg = float(center_weight), float(sigma)

    def score(ctx: PruneContext) -> torch.Tensor:
        valid = ctx.valid_mask()                                      # [B, N]
        prior = center_prior(*ctx.grid, sg).to(ctx.features.device)  # [N]
        mixed = (1.0 - cw) * feature_saliency(ctx.features, valid) + cw * prior  # [B, N]
        return torch.where(valid, mixed, 0.0)

    return score


# -- the hooks: called once when vtprune builds its registry -----------------------------------


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [
        ScorerSpec(
            "center_saliency",
            make_center_saliency,
            Capabilities(deterministic=True, batch_consistent=True),
            description="feature saliency (cosine distance to the mean) mixed with a centre prior",
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "center_saliency",
            scorer="center_saliency",
            allocator="global",  # built-in: one budget per sample
            selector="topk",  # built-in: highest scores, ascending indices
            description="keep the most distinctive tokens, with a pull towards the centre",
            reference="vtprune example plugin",
        )
    ]
