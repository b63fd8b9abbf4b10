"""The adapter contract: what a model family must provide to run a pruning schedule.

An adapter wraps one model instance. It answers four questions — does it support this model,
how deep is the LLM, where are the visual tokens, which signals can it supply at a prune
point — and installs / removes its hooks. Adapters are registered by class and picked by
:func:`find_adapter`; the first whose :meth:`BackboneAdapter.supports` accepts the model wins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..core.errors import VtpruneError
from ..core.schedule import AttentionSource


class UnsupportedModelError(VtpruneError, TypeError):
    """No registered adapter supports this model (or this transformers version)."""


class BackboneAdapter(ABC):
    """Runs a :class:`~vtprune.core.Schedule` inside one model instance.

    Subclasses set :attr:`name`, implement the abstract members, and register themselves with
    :func:`register_adapter`. ``install`` may only use module hooks or instance-level wrappers
    of the model's own forward path (never patch classes), and ``remove`` must undo all of it.

    Example (the shape of a new adapter)::

        @register_adapter
        class MyAdapter(BackboneAdapter):
            name = "my-family"
            @classmethod
            def supports(cls, model): return type(model).__name__ == "MyVLM"
            ...
    """

    name: ClassVar[str] = ""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.attention_source: AttentionSource = "previous"

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
    def grid(self) -> tuple[int, int]:
        """Visual token grid (h, w) of one image; ``h * w`` tokens per image."""

    @property
    def num_visual_tokens(self) -> int:
        h, w = self.grid
        return h * w

    @abstractmethod
    def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] bool: True at the sequence positions holding visual tokens."""

    @abstractmethod
    def signals(self, layer: int | None) -> frozenset[str]:
        """Optional context signals this adapter supplies at a prune point before ``layer``
        (None = before the LLM)."""

    @abstractmethod
    def install(self, handle: Any) -> None:
        """Hook the model so its forward passes and ``generate`` prune as ``handle`` (a
        :class:`~vtprune.backbones.handle.PruneHandle`, which imports this module: hence
        ``Any`` here, not an import cycle) says."""

    @abstractmethod
    def remove(self) -> None:
        """Undo :meth:`install` completely."""


_ADAPTERS: list[type[BackboneAdapter]] = []


def register_adapter(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator adding an adapter to the registry (later registrations are tried first)."""
    if not (isinstance(cls, type) and issubclass(cls, BackboneAdapter)) or not cls.name:
        raise TypeError(f"register_adapter expects a BackboneAdapter subclass with a name, got {cls!r}")
    _ADAPTERS[:] = [a for a in _ADAPTERS if a.name != cls.name]
    _ADAPTERS.insert(0, cls)
    return cls


def list_adapters() -> list[str]:
    """Names of the registered adapters."""
    return [a.name for a in _ADAPTERS]


def find_adapter(model: Any) -> type[BackboneAdapter]:
    """The adapter class for ``model``; raises :class:`UnsupportedModelError` saying why not."""
    for cls in _ADAPTERS:
        if cls.supports(model):
            reason = cls.unsupported_reason(model)
            if reason is not None:
                raise UnsupportedModelError(reason)
            return cls
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise UnsupportedModelError(
        f"no vtprune backbone adapter supports {type(model).__name__} (model_type={model_type!r}). "
        f"Registered adapters: {', '.join(list_adapters()) or 'none'}. Load the model as "
        "transformers' LlavaForConditionalGeneration, or write an adapter (docs/adapters.md)."
    )


__all__ = [
    "AttentionSource",
    "BackboneAdapter",
    "UnsupportedModelError",
    "register_adapter",
    "find_adapter",
    "list_adapters",
]
