"""Typed records that plugins return from their hooks."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import ContractError
from .schedule import ScheduleFactory
from .types import SIGNALS, Allocation, PruneContext, Selection

Scorer = Callable[[PruneContext], torch.Tensor]
"""``scorer(ctx) -> scores [B, N]`` (float, finite, higher = more worth keeping)."""
Allocator = Callable[[PruneContext, torch.Tensor], Allocation]
"""``allocator(ctx, scores) -> Allocation``."""
Selector = Callable[[PruneContext, torch.Tensor, Allocation], Selection]
"""``selector(ctx, scores, allocation) -> Selection``."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.+-]*$")


@dataclass(frozen=True)
class Capabilities:
    """What a stage needs and promises. The conformance kit reads these, never names.

    Attributes:
        needs: optional context signals required (subset of ``vtprune.core.SIGNALS``).
        deterministic: same inputs (same seed / generator state) give the same output.
        batch_consistent: a sample's result does not depend on the rest of its batch.
        merges: the selector returns replacement features (``Selection.features``).
        text_in_feature_space: compares ``text_features`` with ``features`` directly, so it
            needs D_text == D (what the adapters supply: the LLM's states for both); the
            conformance kit then draws text as wide as the features.
        row_grids: the stage handles contexts with per-row grids (``PruneContext.grids``) on
            the canvas: each row's output is what it would be on the row's own grid alone
            (the conformance kit checks it). Without it, :class:`~vtprune.core.Strategy`
            crops the rows to their own grids and calls the stage once per distinct grid.
        regions: an allocator that splits the budget into per-region quotas
            (``Allocation.regions`` / ``quotas``), like ALTP's ``ddc`` and ``ddf``.
        region_quotas: a selector that keeps exactly ``quotas[b, r]`` tokens in each region
            when the allocation has regions (the kit checks it). False: it takes one budget per
            sample only; the registry then refuses to compose it with a ``regions`` allocator
            and refuses a region allocation at run time, with one message.
    """

    needs: frozenset[str] = frozenset()
    deterministic: bool = True
    batch_consistent: bool = True
    merges: bool = False
    text_in_feature_space: bool = False
    row_grids: bool = False
    regions: bool = False
    region_quotas: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(SIGNALS)
        if unknown:
            raise ContractError(f"unknown signals {sorted(unknown)}; known signals: {list(SIGNALS)}")
        object.__setattr__(self, "needs", frozenset(self.needs))

    def __or__(self, other: Capabilities) -> Capabilities:
        return Capabilities(
            needs=self.needs | other.needs,
            deterministic=self.deterministic and other.deterministic,
            batch_consistent=self.batch_consistent and other.batch_consistent,
            merges=self.merges or other.merges,
            text_in_feature_space=self.text_in_feature_space or other.text_in_feature_space,
            row_grids=self.row_grids and other.row_grids,
            regions=self.regions or other.regions,
            region_quotas=self.region_quotas and other.region_quotas,
        )


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ContractError(
            f"{kind} name {name!r} is invalid: use lower-case letters, digits and _ . + - , "
            "starting with a letter"
        )


def accepted_params(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword parameters a factory accepts (None if it takes ``**kwargs``)."""
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {
        n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: a factory taking keyword parameters and returning the stage function.

    ``factory(**params)`` must return a plain callable (see :data:`Scorer`, :data:`Allocator`,
    :data:`Selector`). Parameters have defaults, documented in the factory's docstring.
    """

    kind: ClassVar[str] = "stage"
    name: str
    factory: Callable[..., Callable[..., Any]]
    capabilities: Capabilities = field(default_factory=Capabilities)
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.kind, self.name)
        if not callable(self.factory):
            raise ContractError(f"{self.kind} {self.name!r}: factory must be callable")

    def build(self, **params: Any) -> Callable[..., Any]:
        """Call the factory with ``params`` (each must be accepted by it)."""
        accepted = accepted_params(self.factory)
        if accepted is not None:
            unknown = set(params) - accepted
            if unknown:
                raise ContractError(
                    f"{self.kind} {self.name!r} takes no parameter(s) {sorted(unknown)}; "
                    f"it accepts {sorted(accepted) or 'none'}"
                )
        return self.factory(**params)


@dataclass(frozen=True)
class ScorerSpec(StageSpec):
    kind: ClassVar[str] = "scorer"


@dataclass(frozen=True)
class AllocatorSpec(StageSpec):
    kind: ClassVar[str] = "allocator"


@dataclass(frozen=True)
class SelectorSpec(StageSpec):
    kind: ClassVar[str] = "selector"


@dataclass(frozen=True)
class StrategySpec:
    """A named triple of registered stages with default parameters and a default schedule.

    Attributes:
        name: the strategy's registry name.
        scorer, allocator, selector: names of registered stages.
        params: default parameters, routed to every stage whose factory accepts them.
        schedule: ``factory(num_layers, keep) -> Schedule``; None means prune before the LLM.
        description: one line for listings; ``reference``: the paper or code it follows.
    """

    kind: ClassVar[str] = "strategy"
    name: str
    scorer: str
    allocator: str
    selector: str
    params: Mapping[str, Any] = field(default_factory=dict)
    schedule: ScheduleFactory | None = None
    description: str = ""
    reference: str = ""

    def __post_init__(self) -> None:
        _check_name("strategy", self.name)
        object.__setattr__(self, "params", dict(self.params))
