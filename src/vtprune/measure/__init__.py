"""Cost accounting of pruning schedules: FLOPs, visual tokens per layer, KV-cache bytes.

Example::

    from vtprune.core import Schedule
    from vtprune.measure import ModelDims, compare
    dims = ModelDims(hidden=4096, intermediate=11008, layers=32, heads=32, gated=False)
    c = compare(dims, Schedule.at_layers([(2, 0.5)]), visual=576, total=611, formula="design")
    c.prefill_ratio   # ~0.56: FastV K=2 R=50% on LLaVA-1.5-7B, the paper's formula
"""

from .flops import (
    DTYPE_BYTES,
    Accounting,
    Comparison,
    ModelDims,
    account,
    compare,
    describe_schedule,
    layer_flops,
    visual_per_layer,
)

__all__ = [
    "DTYPE_BYTES", "Accounting", "Comparison", "ModelDims", "account", "compare",
    "describe_schedule", "layer_flops", "visual_per_layer",
]
