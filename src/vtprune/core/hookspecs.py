"""pluggy hook specifications: the five things a vtprune plugin can provide.

A plugin is a module (or object) with functions marked ``@vtprune.hookimpl`` whose names
match these specs, registered through the ``vtprune`` entry-point group::

    [project.entry-points.vtprune]
    my_plugin = "my_package.plugin"

Hooks are called once, when the registry is built; the stages they return are plain
functions called directly during pruning, and the adapters are classes that ``attach``
instantiates on one model (see :class:`AdapterSpec`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pluggy

from .errors import ContractError
from .specs import AllocatorSpec, ScorerSpec, SelectorSpec, StrategySpec, _check_name

PROJECT = "vtprune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class AdapterSpec:
    """A backbone adapter a plugin provides: what :func:`vtprune_adapters` returns.

    Attributes:
        name: the adapter's registry name (lower case, like stage names); must equal the
            class's own ``name`` attribute, which error messages and handles report.
        adapter: the :class:`vtprune.backbones.BackboneAdapter` subclass. ``attach`` tries
            ``adapter.supports(model)`` and, if true, builds ``adapter(model)``.
        models: names of the model classes it drives (e.g. ``"LlavaForConditionalGeneration"``),
            for listings and error messages only: ``supports`` alone decides.
        description: one line for ``vtprune adapters``; defaults to the first line of the
            class docstring.

    The core checks only the shape of the record (it knows nothing of models); that
    ``adapter`` really is a ``BackboneAdapter`` with this name is checked by
    :mod:`vtprune.backbones` when the adapters are first looked at.
    """

    kind: ClassVar[str] = "adapter"
    name: str
    adapter: type[Any]
    models: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.kind, self.name)
        if not isinstance(self.adapter, type) or not callable(getattr(self.adapter, "supports", None)):
            raise ContractError(
                f"adapter {self.name!r}: `adapter` must be a BackboneAdapter subclass, "
                f"got {self.adapter!r}"
            )
        models: Any = self.models
        models = (models,) if isinstance(models, str) else tuple(models)
        if not all(isinstance(m, str) and m for m in models):
            raise ContractError(f"adapter {self.name!r}: `models` must be class names, got {models!r}")
        object.__setattr__(self, "models", models)
        if not self.description:
            doc = (self.adapter.__doc__ or "").strip()
            object.__setattr__(self, "description", doc.splitlines()[0] if doc else "")


@hookspec
def vtprune_scorers() -> Iterable[ScorerSpec]:
    """Return the scorers this plugin provides: ``scorer(ctx) -> scores [B, N]``."""
    raise NotImplementedError


@hookspec
def vtprune_allocators() -> Iterable[AllocatorSpec]:
    """Return the allocators this plugin provides: ``allocator(ctx, scores) -> Allocation``."""
    raise NotImplementedError


@hookspec
def vtprune_selectors() -> Iterable[SelectorSpec]:
    """Return the selectors: ``selector(ctx, scores, allocation) -> Selection``."""
    raise NotImplementedError


@hookspec
def vtprune_strategies() -> Iterable[StrategySpec]:
    """Return named strategies, each a triple of registered stage names plus defaults."""
    raise NotImplementedError


@hookspec
def vtprune_adapters() -> Iterable[AdapterSpec]:
    """Return the backbone adapters this plugin provides, one :class:`AdapterSpec` each."""
    raise NotImplementedError
