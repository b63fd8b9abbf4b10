"""PyramidDrop (Xing et al., arXiv 2410.17247; reference code Cooperx521/PyramidDrop).

The decoder is split into stages at layers 8, 16 and 24 of 32 (scaled to the model's depth).
At each boundary the visual tokens still alive are ranked by the attention they receive from
one query — the last instruction token — computed with the next layer's input norm, q/k
projections and RoPE (the backbone adapter supplies it as ``ctx.attention``), and the top ones
survive. Each stage keeps ``ratio`` (λ) times the previous stage's count.

How vtprune maps the user's ``keep``: **``keep`` is the share of the original visual tokens
alive after the first boundary**; later boundaries keep ``keep * ratio**i``. With the
paper's setting ``keep=0.5, ratio=0.5`` that is 50% / 25% / 12.5% of the original count after
layers 8 / 16 / 24 of a 32-layer model. ``keep`` as a token count works the same way (each
later count is the previous count times ``ratio``, rounded half up). All visual tokens are
kept before the first boundary, so the average visual-token count over layers is larger than
``keep`` — see :func:`average_keep`.

Differences from the reference code, on purpose: counts use vtprune's one rounding rule
(half up; the reference truncates — identical for 576 tokens); scores are computed per sample
with padding respected; survivors keep their original positions by default (the reference
renumbers them contiguously and shifts decode positions down; ``positions="compact"`` in the
schedule does that).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..core import ContractError, Keep, Schedule, StrategySpec, hookimpl

REFERENCE_DEPTH = 32
REFERENCE_LAYERS = (8, 16, 24)


def pdrop_layers(num_layers: int) -> list[int]:
    """The paper's boundaries 8/16/24 of 32 scaled to ``num_layers`` (rounded half up).

    8 layers -> [2, 4, 6]; 4 layers -> [1, 2, 3]; 40 layers -> [10, 20, 30]. Needs at least
    4 layers (otherwise boundaries collide); pass ``layers=`` explicitly for shallower models.
    """
    if not isinstance(num_layers, int) or num_layers < 4:
        raise ContractError(
            f"PyramidDrop's default boundaries need a model with >= 4 decoder layers, got "
            f"num_layers={num_layers!r}; pass layers=[...] explicitly (each in 1..num_layers-1)"
        )
    return [int(math.floor(b * num_layers / REFERENCE_DEPTH + 0.5)) for b in REFERENCE_LAYERS]


def pdrop_keeps(keep: Keep, stages: int, ratio: float = 0.5) -> list[Keep]:
    """Keep of each boundary relative to the original count: keep, keep*ratio, keep*ratio², …

    A float ``keep`` gives float ratios; an int ``keep`` (a token count) gives int counts,
    each the previous times ``ratio`` rounded half up.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ContractError(f"PyramidDrop ratio (λ) must be a number in (0, 1], got {ratio!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ContractError(f"keep must be an int count or a float ratio, got {keep!r}")
    if isinstance(keep, int):
        counts = [keep]
        for _ in range(stages - 1):
            counts.append(int(math.floor(counts[-1] * ratio + 0.5)))
        return list(counts)
    return [float(keep) * ratio**i for i in range(stages)]


def pdrop_schedule(
    num_layers: int, keep: Keep, layers: Sequence[int] | None = None, ratio: float = 0.5
) -> Schedule:
    """Prune before each boundary layer, keeping ``keep * ratio**i`` of the original tokens.

    Args:
        num_layers: decoder depth of the model.
        keep: share (float) or count (int) of the original visual tokens alive after the first
            boundary. The paper's setting is 0.5.
        layers: boundary layers (0-based index of the first layer that sees fewer tokens;
            the paper's "after layer 8" is layer 8 here); default :func:`pdrop_layers`.
        ratio: λ, each stage keeps this share of the previous one (default 0.5).
    """
    bounds = pdrop_layers(num_layers) if layers is None else [int(v) for v in layers]
    if not bounds:
        raise ContractError("PyramidDrop needs at least one boundary layer")
    if any(not 1 <= v < num_layers for v in bounds) or bounds != sorted(set(bounds)):
        raise ContractError(
            f"PyramidDrop boundaries must be strictly increasing layers in 1..{num_layers - 1} "
            f"(attention is read from the layer before), got {bounds}"
        )
    keeps = pdrop_keeps(keep, len(bounds), ratio)
    # PyramidDrop scores a boundary with layer K's own norm, q/k projections and RoPE applied
    # to its input (the reference's rank layer), not with layer K-1's attention as FastV does.
    return Schedule.at_layers(list(zip(bounds, keeps)), attention="current")


def average_keep(num_layers: int, keep: Keep, original: int, layers: Sequence[int] | None = None, ratio: float = 0.5) -> float:
    """Average visual-token count over all decoder layers, as a share of ``original``.

    The figure papers quote as "tokens": for 32 layers, keep=0.5, ratio=0.5 it is
    (8·1 + 8·0.5 + 8·0.25 + 8·0.125) / 32 = 0.47.
    """
    schedule = pdrop_schedule(num_layers, keep, layers, ratio)
    counts = schedule.counts(original)
    bounds = [p.layer for p in schedule.points]
    total = 0.0
    alive = float(original)
    prev = 0
    for layer, count in zip(bounds, counts):
        assert layer is not None
        total += alive * (layer - prev)
        alive, prev = float(count), layer
    total += alive * (num_layers - prev)
    return total / (num_layers * original) if original else 0.0


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "pyramiddrop", "attention", "global", "topk",
            schedule=pdrop_schedule,
            description="PyramidDrop: top attention of the last instruction token at layers 8/16/24 of 32",
            reference="arXiv 2410.17247",
        )
    ]
