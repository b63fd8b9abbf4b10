"""vtprune: visual-token pruning for vision-language models.

Quick start::

    import torch, vtprune
    strategy = vtprune.get_strategy("uniform")
    ctx = vtprune.PruneContext.create(torch.randn(2, 576, 64), keep=0.25)
    selection = strategy(ctx)          # kept indices [2, 144], sorted per sample

Inside a model (Hugging Face transformers LLaVA)::

    with vtprune.attach(model, "altp", keep=0.1) as handle:
        out = model.generate(**inputs, max_new_tokens=32)

The public names below live in :mod:`vtprune.core` and are imported on first use (PEP 562),
so that ``import vtprune.<submodule>`` — e.g. the pytest plugin of the conformance kit — does
not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backbones import attach
    from .core import (
        PAD_INDEX,
        AdapterSpec,
        Allocation,
        AllocatorSpec,
        Capabilities,
        ContractError,
        MissingSignalError,
        PluginError,
        PruneContext,
        PrunePoint,
        Schedule,
        ScorerSpec,
        Selection,
        SelectorSpec,
        Strategy,
        StrategySpec,
        UnknownNameError,
        VtpruneError,
        compose,
        get_strategy,
        hookimpl,
        keep_count,
        list_stages,
        list_strategies,
        register,
        reload_plugins,
    )

__version__ = "0.1.0"

__all__ = [
    "PAD_INDEX", "AdapterSpec", "Allocation", "AllocatorSpec", "Capabilities", "ContractError",
    "MissingSignalError", "PluginError", "PruneContext", "PrunePoint", "Schedule", "ScorerSpec",
    "Selection", "SelectorSpec", "Strategy", "StrategySpec", "UnknownNameError", "VtpruneError",
    "compose", "get_strategy", "hookimpl", "keep_count", "list_stages", "list_strategies",
    "register", "reload_plugins", "attach", "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "core":  # ``import vtprune; vtprune.core.X`` worked when core was imported eagerly
        return importlib.import_module(".core", __name__)
    if name == "attach":  # the backbone entry point; imports transformers on first use
        value = importlib.import_module(".backbones", __name__).attach
        globals()[name] = value
        return value
    if name in __all__:
        value = getattr(importlib.import_module(".core", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
