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

Adapters are found through the plugin registry (the ``vtprune_adapters`` hook; vtprune's own
LLaVA adapter is an entry point of the vtprune distribution): see :mod:`.base` and
docs/adapters.md, "Writing an adapter plugin". Families whose language model is Llama-like
subclass :class:`DecoderAdapter` and override its named steps (docs/adapters.md, "Writing an
adapter for another family").
"""

from .base import (
    AdapterSpec,
    BackboneAdapter,
    UnsupportedModelError,
    adapter_specs,
    find_adapter,
    get_adapter,
    list_adapters,
    register_adapter,
    unregister_adapter,
)
from .decoder_adapter import DecoderAdapter
from .handle import PruneHandle, attach
from .records import PruneRecord, summarize

__all__ = [
    "attach",
    "PruneHandle",
    "PruneRecord",
    "summarize",
    "AdapterSpec",
    "BackboneAdapter",
    "DecoderAdapter",
    "UnsupportedModelError",
    "register_adapter",
    "unregister_adapter",
    "adapter_specs",
    "get_adapter",
    "find_adapter",
    "list_adapters",
]
