"""Where pruning happens: before the LLM, or before chosen decoder layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .budget import Keep, keep_count
from .errors import ContractError

Positions = Literal["original", "compact"]
AttentionSource = Literal["previous", "current"]


@dataclass(frozen=True)
class PrunePoint:
    """One pruning step.

    Attributes:
        layer: decoder layer the step runs before (0..L-1); ``None`` means before the LLM,
            right after the projector.
        keep: tokens that survive the step, as a ratio of (or count out of) the *original*
            number of visual tokens.
    """

    layer: int | None
    keep: Keep

    def count(self, original: int) -> int:
        """Survivors out of ``original`` visual tokens (the project's one rounding rule)."""
        return keep_count(self.keep, original)


@dataclass(frozen=True)
class Schedule:
    """An ordered list of prune points, plus how survivors are positioned (RoPE).

    ``positions="original"`` keeps each survivor's position id (the default, and the right
    choice for grounding); ``"compact"`` renumbers survivors contiguously.

    ``attention`` says which layer's attention scores a point before layer K, for
    attention-scored strategies: ``"previous"`` (layer K-1's attention, what FastV reads) or
    ``"current"`` (layer K's own norm, q/k projections and RoPE applied to its input, what
    PyramidDrop's reference code computes).
    """

    points: tuple[PrunePoint, ...]
    positions: Positions = "original"
    attention: AttentionSource = "previous"

    def __post_init__(self) -> None:
        if not self.points:
            raise ContractError("a schedule needs at least one PrunePoint")
        if self.positions not in ("original", "compact"):
            raise ContractError(f"positions must be 'original' or 'compact', got {self.positions!r}")
        if self.attention not in ("previous", "current"):
            raise ContractError(f"attention must be 'previous' or 'current', got {self.attention!r}")
        layers = [-1 if p.layer is None else p.layer for p in self.points]
        if any(p.layer is not None and p.layer < 0 for p in self.points):
            raise ContractError(f"prune layers must be >= 0 (None = before the LLM), got {layers}")
        if layers != sorted(layers) or len(set(layers)) != len(layers):
            raise ContractError(f"prune points must be in strictly increasing layer order, got {layers}")

    @classmethod
    def pre_llm(cls, keep: Keep, positions: Positions = "original") -> Schedule:
        """Prune once, before the LLM."""
        return cls((PrunePoint(None, keep),), positions)

    @classmethod
    def at_layers(
        cls,
        points: Sequence[tuple[int, Keep]],
        positions: Positions = "original",
        attention: AttentionSource = "previous",
    ) -> Schedule:
        """Prune before each ``(layer, keep)`` point, keeps relative to the original count."""
        return cls(tuple(PrunePoint(layer, keep) for layer, keep in points), positions, attention)

    def counts(self, original: int) -> list[int]:
        """Survivors after each point out of ``original`` tokens; checks they never grow."""
        counts = [p.count(original) for p in self.points]
        if any(b > a for a, b in zip([original, *counts], counts)):
            raise ContractError(f"token counts must not grow along a schedule, got {counts} of {original}")
        return counts

    def check_depth(self, num_layers: int) -> None:
        """Raise if a point lies past the model's last decoder layer."""
        bad = [p.layer for p in self.points if p.layer is not None and p.layer >= num_layers]
        if bad:
            raise ContractError(
                f"prune layers {bad} do not exist in a model with {num_layers} decoder layers "
                f"(valid: 0..{num_layers - 1})"
            )


ScheduleFactory = Callable[..., Schedule]
"""``factory(num_layers, keep, **params) -> Schedule``: a strategy's placement for a model depth.

Keyword parameters of the factory are strategy parameters (e.g. FastV's ``layer``), routed to
it by :func:`vtprune.get_strategy` like stage parameters."""


def pre_llm_schedule(num_layers: int, keep: Keep) -> Schedule:
    """Default factory: prune once before the LLM."""
    return Schedule.pre_llm(keep)
