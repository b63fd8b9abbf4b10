"""PyramidDrop (Xing et al., arXiv 2410.17247; reference code Cooperx521/PyramidDrop).

The decoder is split into stages at layers 8, 16 and 24 of 32 (scaled to the model's depth).
At each boundary the visual tokens still alive are ranked by the attention they receive from
one query — the last instruction token — computed with the next layer's input norm, q/k
projections and RoPE (the backbone adapter supplies it as ``ctx.attention``), and the top ones
survive. Each stage keeps ``ratio`` (λ) times the previous stage's count. All visual tokens
are kept before the first boundary.

What the user's ``keep`` means is chosen by the ``budget`` parameter:

- ``budget="average"`` (the default): **``keep`` is the mean share of the original visual
  tokens over the layers from the first boundary to the last layer** — the quantity FastV's
  ``keep`` fixes, so strategies compare fairly at one ``keep``. Stage shares stay geometric:
  the first stage keeps ``k = keep * (L - l1) / sum_i(len_i * ratio**i)`` (``len_i`` = layers
  in stage i, ``l1`` = first boundary) and stage i keeps ``k * ratio**i``. On 32 layers with
  ``ratio=0.5``, ``keep=0.1`` gives 17.1% / 8.6% / 4.3%, i.e. 99 / 49 / 25 of 576 tokens (mean
  57.7 ≈ 58 = 10% of 576). A first stage above 100% is refused (:class:`ContractError`): with
  ``ratio=0.5`` and the default boundaries the largest ``keep`` is 7/12 ≈ 58.3%
  (:func:`max_average_keep`).
- ``budget="first"``: ``keep`` is the share alive after the first boundary and later
  boundaries keep ``keep * ratio**i``. **This is the paper's reading: its exact setting is
  ``budget="first", keep=0.5`` (ratio 0.5)**, i.e. 50% / 25% / 12.5% after layers 8 / 16 / 24
  of 32. It spends fewer tokens than FastV at the same ``keep``.

An int ``keep`` is a token count with the same two readings; see :func:`pdrop_keeps` and
:func:`pdrop_average_keeps` for the rounding. :func:`average_keep` reports the mean over all
layers (the figure papers quote as "tokens").

Differences from the reference code, on purpose: counts use vtprune's one rounding rule
(half up; the reference truncates — identical for 576 tokens); scores are computed per sample
with padding respected; survivors keep their original positions by default (the reference
renumbers them contiguously and shifts decode positions down; ``positions="compact"`` in the
schedule does that).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from ..core import ContractError, Keep, PrunePoint, Schedule, StrategySpec, hookimpl

REFERENCE_DEPTH = 32
REFERENCE_LAYERS = (8, 16, 24)
BUDGETS = ("average", "first")
_FIX = "lower keep, raise ratio (1.0 keeps every stage at keep), or pass budget='first'"


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


def _check(keep: Keep, ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ContractError(f"PyramidDrop ratio (λ) must be a number in (0, 1], got {ratio!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ContractError(f"keep must be an int count or a float ratio, got {keep!r}")


def pdrop_keeps(keep: Keep, stages: int, ratio: float = 0.5) -> list[Keep]:
    """``budget="first"``: keep of each boundary relative to the original count.

    keep, keep*ratio, keep*ratio², … A float ``keep`` gives float ratios; an int ``keep`` (a
    token count) gives int counts, each the previous times ``ratio`` rounded half up.
    """
    _check(keep, ratio)
    if isinstance(keep, int):
        counts = [keep]
        for _ in range(stages - 1):
            counts.append(int(math.floor(counts[-1] * ratio + 0.5)))
        return list(counts)
    return [float(keep) * ratio**i for i in range(stages)]


def _weights(lengths: Sequence[int], ratio: float) -> tuple[Fraction, Fraction]:
    """``(L - l1, sum_i len_i * ratio**i)`` exactly (``ratio`` read as its shortest decimal)."""
    lam = Fraction(repr(float(ratio)))
    return Fraction(sum(lengths)), sum((n * lam**i for i, n in enumerate(lengths)), Fraction(0))


def pdrop_average_keeps(keep: Keep, lengths: Sequence[int], ratio: float = 0.5) -> list[Keep]:
    """``budget="average"``: keep of each stage so the mean over the pruned layers is ``keep``.

    ``lengths[i]`` is the number of layers in stage i (from boundary i to the next one or the
    end). Stage i keeps ``k * ratio**i`` with ``k = keep * sum(lengths) / sum_i(lengths[i] *
    ratio**i)``, computed exactly. A float ``keep`` gives float shares (each later rounded half
    up by :func:`vtprune.core.keep_count`, so the mean is within half a token per stage of
    ``keep``'s count); an int ``keep`` (a mean token count) gives each stage's count rounded
    half up from its exact value (not chained), so the mean is within half a token of ``keep``.
    Raises :class:`ContractError` when a float ``keep`` needs a first stage above 100%; for an
    int ``keep`` that check needs the token count and is made by the schedule's ``counts``.
    """
    _check(keep, ratio)
    if not lengths or any(n < 1 for n in lengths):
        raise ContractError(f"PyramidDrop stage lengths must be >= 1 layer each, got {list(lengths)}")
    span, weight = _weights(lengths, ratio)
    lam = Fraction(repr(float(ratio)))
    if isinstance(keep, int):
        if keep < 0:
            raise ContractError(f"keep={keep} tokens must be >= 0")
        return [math.floor(keep * span * lam**i / weight + Fraction(1, 2)) for i in range(len(lengths))]
    if not math.isfinite(keep) or not 0.0 <= keep <= 1.0:
        raise ContractError(f"keep ratio must be a finite float in [0, 1], got {keep!r}")
    first = Fraction(repr(float(keep))) * span / weight
    if first > 1 + Fraction(1, 10**12):  # tolerate float noise in keep == max_average_keep(...)
        limit = weight / span
        raise ContractError(
            f"pyramiddrop budget='average': keep={keep} asks for a mean of {keep:.1%} of the visual "
            f"tokens over the pruned layers, so the first stage would keep {float(first):.1%}. "
            f"With ratio={ratio} and these boundaries the mean is at most {float(limit):.1%} "
            f"(keep <= {math.floor(limit * 10**4) / 10**4}); {_FIX}"
        )
    first = min(first, Fraction(1))
    return [float(first * lam**i) for i in range(len(lengths))]


def _stage_lengths(num_layers: int, bounds: Sequence[int]) -> list[int]:
    return [b - a for a, b in zip(bounds, [*bounds[1:], num_layers])]


def _bounds(num_layers: int, layers: Sequence[int] | None) -> list[int]:
    bounds = pdrop_layers(num_layers) if layers is None else [int(v) for v in layers]
    if not bounds:
        raise ContractError("PyramidDrop needs at least one boundary layer")
    if any(not 1 <= v < num_layers for v in bounds) or bounds != sorted(set(bounds)):
        raise ContractError(
            f"PyramidDrop boundaries must be strictly increasing layers in 1..{num_layers - 1} "
            f"(attention is read from the layer before), got {bounds}"
        )
    return bounds


def max_average_keep(num_layers: int, layers: Sequence[int] | None = None, ratio: float = 0.5) -> float:
    """Largest ``budget="average"`` keep (a share): ``sum_i(len_i * ratio**i) / (L - l1)``.

    7/12 ≈ 0.583 for ``ratio=0.5`` and the default boundaries at any depth divisible by 4.
    """
    _check(0.0, ratio)
    span, weight = _weights(_stage_lengths(num_layers, _bounds(num_layers, layers)), ratio)
    return float(weight / span)


@dataclass(frozen=True)
class _AverageCountSchedule(Schedule):
    """A ``budget="average"`` schedule from an int ``keep``: explains an infeasible count."""

    mean: int = field(default=0, compare=False)
    max_share: float = field(default=1.0, compare=False)

    def counts(self, original: int) -> list[int]:
        first = self.points[0].keep
        if isinstance(first, int) and first > original >= 0:
            raise ContractError(
                f"pyramiddrop budget='average': keep={self.mean} tokens on average over the pruned "
                f"layers needs {first} tokens in the first stage, more than the {original} visual "
                f"tokens. With this ratio and these boundaries the mean is at most "
                f"{self.max_share:.1%} of the tokens (about {self.max_share * original:.0f}); {_FIX}"
            )
        return super().counts(original)


def pdrop_schedule(
    num_layers: int,
    keep: Keep,
    layers: Sequence[int] | None = None,
    ratio: float = 0.5,
    budget: str = "average",
) -> Schedule:
    """Prune before each boundary layer; stage i keeps ``ratio**i`` times the first stage.

    Args:
        num_layers: decoder depth of the model.
        keep: share (float) or count (int) of the original visual tokens; what it fixes
            depends on ``budget``.
        layers: boundary layers (0-based index of the first layer that sees fewer tokens;
            the paper's "after layer 8" is layer 8 here); default :func:`pdrop_layers`.
        ratio: λ, each stage keeps this share of the previous one (default 0.5).
        budget: ``"average"`` (default): ``keep`` is the mean over the layers from the first
            boundary to the last, as for FastV (:func:`pdrop_average_keeps`); ``"first"``:
            ``keep`` is the share after the first boundary, the paper's reading
            (:func:`pdrop_keeps`; the paper's setting is ``keep=0.5``). In both readings
            ``keep=1.0`` keeps every token at every boundary (keep-all is the identity).

    Raises:
        ContractError: unknown ``budget``, bad boundaries or ratio, or an average ``keep``
            above :func:`max_average_keep`.
    """
    if budget not in BUDGETS:
        raise ContractError(
            f"pyramiddrop budget must be 'average' (keep = mean share over the pruned layers, "
            f"the default) or 'first' (keep = share after the first boundary), got {budget!r}"
        )
    bounds = _bounds(num_layers, layers)
    _check(keep, ratio)
    if isinstance(keep, float) and keep == 1.0:
        # keep-all is the identity for every strategy (the contract's first invariant), in both
        # readings: the boundaries stay (records show them) but no stage drops a token
        return Schedule.at_layers([(b, 1.0) for b in bounds], attention="current")
    # PyramidDrop scores a boundary with layer K's own norm, q/k projections and RoPE applied
    # to its input (the reference's rank layer), not with layer K-1's attention as FastV does.
    if budget == "first":
        return Schedule.at_layers(list(zip(bounds, pdrop_keeps(keep, len(bounds), ratio))), attention="current")
    lengths = _stage_lengths(num_layers, bounds)
    keeps = pdrop_average_keeps(keep, lengths, ratio)
    points = tuple(PrunePoint(b, k) for b, k in zip(bounds, keeps))
    if isinstance(keep, int):
        span, weight = _weights(lengths, ratio)
        return _AverageCountSchedule(points, attention="current", mean=keep, max_share=float(weight / span))
    return Schedule(points, attention="current")


def average_keep(
    num_layers: int,
    keep: Keep,
    original: int,
    layers: Sequence[int] | None = None,
    ratio: float = 0.5,
    budget: str = "average",
) -> float:
    """Average visual-token count over *all* decoder layers, as a share of ``original``.

    The figure papers quote as "tokens": for 32 layers, ``keep=0.5, ratio=0.5,
    budget="first"`` it is (8·1 + 8·0.5 + 8·0.25 + 8·0.125) / 32 = 0.47. With
    ``budget="average"`` it is about ``(l1 + (L - l1) * keep) / L`` (the layers before the
    first boundary see every token).
    """
    schedule = pdrop_schedule(num_layers, keep, layers, ratio, budget)
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
            description=(
                "PyramidDrop: top attention of the last instruction token at layers 8/16/24 of 32 "
                "(keep = mean over the pruned layers; budget='first': share after layer 8)"
            ),
            reference="arXiv 2410.17247",
        )
    ]
