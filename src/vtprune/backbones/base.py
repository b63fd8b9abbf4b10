"""The adapter contract: what a model family must provide to run a pruning schedule.

An adapter wraps one model instance. It answers four questions — does it support this model,
how deep is the LLM, where are the visual tokens, which signals can it supply at a prune
point — and installs / removes its hooks.

Adapters come from plugins, like strategies: a plugin's ``vtprune_adapters`` hook returns
:class:`~vtprune.core.AdapterSpec` records (vtprune's own LLaVA adapter is the entry point
``llava = "vtprune.backbones.llava"`` of the vtprune distribution). :func:`register_adapter`
adds one in-process, through the same hook (a plugin of the process-wide registry), and takes
precedence. :func:`find_adapter` picks the adapter whose :meth:`BackboneAdapter.supports`
accepts the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..core.errors import PluginError, UnknownNameError, VtpruneError
from ..core.hookspecs import AdapterSpec
from ..core.registry import PROCESS_SOURCE, default_registry
from ..core.schedule import AttentionSource
from ..core.specs import NAME_PATTERN
from .plan import PrunePlan


class UnsupportedModelError(VtpruneError, TypeError):
    """No registered adapter supports this model (or this transformers version)."""


class BackboneAdapter(ABC):
    """Runs a :class:`~vtprune.core.Schedule` inside one model instance.

    Subclasses set :attr:`name`, implement the abstract members, and are provided by a
    plugin's ``vtprune_adapters`` hook (or, in one process, :func:`register_adapter`).
    ``install`` may only use module hooks or instance-level wrappers of the model's own
    forward path (never patch classes), and ``remove`` must undo all of it. Families whose
    language model is Llama-like subclass :class:`~.decoder_adapter.DecoderAdapter`, which
    runs the pruned decoder loop and leaves named steps to override.

    Example (the shape of a new adapter, in the module an entry point names)::

        class MyAdapter(BackboneAdapter):
            name = "my-family"
            @classmethod
            def supports(cls, model): return type(model).__name__ == "MyVLM"
            ...

        @vtprune.hookimpl
        def vtprune_adapters():
            return [AdapterSpec("my-family", MyAdapter, models=("MyVLM",))]
    """

    name: ClassVar[str] = ""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    @abstractmethod
    def supports(cls, model: Any) -> bool:
        """True if this adapter can drive ``model``."""

    @classmethod
    def unsupported_reason(cls, model: Any) -> str | None:
        """Why a model of the right family still cannot be driven (e.g. a transformers
        version); None when it can."""
        return None

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Number of decoder layers of the language model."""

    @property
    @abstractmethod
    def grid(self) -> tuple[int, int] | None:
        """Visual token grid (h, w) of one image; ``h * w`` tokens per image. None for
        dynamic-resolution families, whose every image has its own grid."""

    @property
    def num_visual_tokens(self) -> int | None:
        """Visual tokens per image, or None when images differ (then a ``keep`` count is
        checked against each image at run time)."""
        grid = self.grid
        return None if grid is None else grid[0] * grid[1]

    def missing_signal_hint(self, signal: str) -> str:
        """Why this family cannot supply ``signal`` and what to do instead ('' = no hint)."""
        return ""

    @abstractmethod
    def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] bool: True at the sequence positions holding visual tokens."""

    @abstractmethod
    def signals(self, layer: int | None) -> frozenset[str]:
        """Optional context signals this adapter supplies at a prune point before ``layer``
        (None = before the LLM). Attention signals (``attention``, ``text_attention``) mean
        "recomputed from the point's scoring layer"; ``attach`` drops them where the plan's
        attention source leaves no scoring layer (``"previous"`` before layer 0)."""

    @abstractmethod
    def install(self, plan: PrunePlan) -> None:
        """Hook the model so its forward passes and ``generate`` run ``plan.strategy`` at every
        point of ``plan.schedule``, and hand each pruned forward's records (one
        :class:`~.records.PruneRecord` per point) to ``plan.report``."""

    @abstractmethod
    def remove(self) -> None:
        """Undo :meth:`install` completely."""


EXPLICIT_SOURCE = PROCESS_SOURCE
"""The source :func:`adapter_specs` gives adapters registered with :func:`register_adapter`."""


def register_adapter(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator registering an adapter in this process, for programmatic use.

    The adapter goes to the process-wide plugin registry, through the same
    ``vtprune_adapters`` hook as plugin adapters (its source: ``"register_adapter (this
    process)"``), and takes precedence over those of plugins: :func:`find_adapter` tries it
    first (the most recent registration first), and one whose name equals a plugin adapter's
    hides that one. Registering a name again replaces the earlier class. Packages should not
    rely on this import side effect: a package provides adapters through the
    ``vtprune_adapters`` hook and the ``vtprune`` entry-point group (see docs/adapters.md,
    "Writing an adapter plugin").
    """
    if not (isinstance(cls, type) and issubclass(cls, BackboneAdapter)) or not cls.name:
        raise TypeError(f"register_adapter expects a BackboneAdapter subclass with a name, got {cls!r}")
    if not NAME_PATTERN.match(cls.name):
        raise TypeError(
            f"adapter name {cls.name!r} is invalid: use lower-case letters, digits and _ . + - , "
            "starting with a letter"
        )
    default_registry().register_adapter(AdapterSpec(cls.name, cls))
    return cls


def unregister_adapter(name: str) -> None:
    """Forget an adapter given to :func:`register_adapter` (plugin adapters are untouched;
    block a plugin with ``VTPRUNE_BLOCK_PLUGINS`` instead). Unknown names are ignored."""
    default_registry().unregister_adapter(name.lower())


def adapter_specs() -> list[tuple[AdapterSpec, str]]:
    """Every adapter, as (spec, source), in the order :func:`find_adapter` tries them.

    First the adapters given to :func:`register_adapter` (most recent first; source
    ``"register_adapter (this process)"``), then those of plugins in registration order
    (vtprune's built-ins first; source ``"<distribution> (plugin '<entry point>')"``). A
    plugin adapter whose name an explicit one reuses is left out. Each is checked to be a
    :class:`BackboneAdapter` named as its spec.
    """
    registry = default_registry()
    out = []
    for spec in registry.adapters():
        source = registry.source("adapter", spec.name)
        cls = spec.adapter
        if not issubclass(cls, BackboneAdapter):
            raise PluginError(
                f"adapter {spec.name!r} from {source} is {cls.__module__}.{cls.__qualname__}, "
                "not a vtprune.backbones.BackboneAdapter subclass"
            )
        if cls.name != spec.name:
            raise PluginError(
                f"adapter {spec.name!r} from {source}: its class {cls.__qualname__} is named "
                f"{cls.name!r}; the spec's name and the class's `name` must be equal"
            )
        out.append((spec, source))
    return out


def list_adapters() -> list[str]:
    """Names of every adapter, in the order :func:`find_adapter` tries them."""
    return [spec.name for spec, _ in adapter_specs()]


def get_adapter(name: str) -> type[BackboneAdapter]:
    """The adapter class registered as ``name`` (case-insensitive, like strategy names)."""
    specs = adapter_specs()
    for spec, _ in specs:
        if spec.name.lower() == name.lower():
            return spec.adapter
    raise UnknownNameError(
        f"no adapter named {name!r}. Registered adapters: "
        f"{', '.join(s.name for s, _ in specs) or 'none'}"
    )


def _describe(spec: AdapterSpec) -> str:
    return f"{spec.name} ({', '.join(spec.models)})" if spec.models else spec.name


def find_adapter(model: Any) -> type[BackboneAdapter]:
    """The adapter class for ``model``; raises :class:`UnsupportedModelError` saying why not.

    Explicitly registered adapters are tried first, in order, and the first that supports
    the model wins. Among plugin adapters exactly one may support it: two plugins claiming
    the same model is a :class:`~vtprune.core.PluginError` naming both (block one with
    ``VTPRUNE_BLOCK_PLUGINS``, or :func:`register_adapter` the one to use).
    """
    specs = adapter_specs()
    for spec, source in specs:
        if source == EXPLICIT_SOURCE and _supports(spec, source, model):
            return _checked(spec.adapter, model)
    claims = [(s, src) for s, src in specs if src != EXPLICIT_SOURCE and _supports(s, src, model)]
    if len(claims) > 1:
        raise PluginError(
            f"{len(claims)} adapters support {type(model).__name__}: "
            + "; ".join(f"{s.name!r} from {src}" for s, src in claims)
            + ". Block all but one with VTPRUNE_BLOCK_PLUGINS, or pick one with "
            "vtprune.backbones.register_adapter(vtprune.backbones.get_adapter(name))."
        )
    if claims:
        return _checked(claims[0][0].adapter, model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    hint = "" if specs else (
        " (none at all: is vtprune installed with its entry points? Reinstall it, e.g. "
        "`pip install -e .`, or check VTPRUNE_BLOCK_PLUGINS)"
    )
    raise UnsupportedModelError(
        f"no vtprune backbone adapter supports {type(model).__name__} (model_type={model_type!r}). "
        f"Registered adapters: {'; '.join(_describe(s) for s, _ in specs) or 'none'}{hint}. "
        "Load the model as one of those classes (e.g. transformers' "
        "LlavaForConditionalGeneration), install an adapter plugin, or write one "
        "(docs/adapters.md, 'Writing an adapter plugin')."
    )


def _supports(spec: AdapterSpec, source: str, model: Any) -> bool:
    """``spec.adapter.supports(model)``; an adapter that raises is reported by its source."""
    try:
        return bool(spec.adapter.supports(model))
    except Exception as exc:  # a third-party adapter's bug must say whose it is
        raise PluginError(
            f"adapter {spec.name!r} from {source}: supports({type(model).__name__}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _checked(cls: type[BackboneAdapter], model: Any) -> type[BackboneAdapter]:
    reason = cls.unsupported_reason(model)
    if reason is not None:
        raise UnsupportedModelError(reason)
    return cls


__all__ = [
    "AttentionSource",
    "BackboneAdapter",
    "UnsupportedModelError",
    "AdapterSpec",
    "register_adapter",
    "unregister_adapter",
    "adapter_specs",
    "get_adapter",
    "find_adapter",
    "list_adapters",
]
