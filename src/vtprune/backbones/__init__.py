"""Backbone adapters: run pruning schedules inside real models.

Example::

    import vtprune
    from vtprune.backbones import attach
    from vtprune.models import build_tiny_llava, make_inputs

    model = build_tiny_llava()
    inputs = make_inputs(model, torch.rand(2, 3, 336, 336), ["describe", "count the cats"])
    with attach(model, "fastv", keep=0.5) as handle:
        out = model.generate(**inputs, max_new_tokens=8)   # pruned, KV cache on
        print(handle.records[0].counts)                    # tensor([288, 288])
"""

from . import llava as _llava  # noqa: F401  (registers the LLaVA adapter)
from .base import (
    BackboneAdapter,
    UnsupportedModelError,
    find_adapter,
    list_adapters,
    register_adapter,
)
from .handle import PruneHandle, attach
from .records import PruneRecord, summarize

__all__ = [
    "attach",
    "PruneHandle",
    "PruneRecord",
    "summarize",
    "BackboneAdapter",
    "UnsupportedModelError",
    "register_adapter",
    "find_adapter",
    "list_adapters",
]
