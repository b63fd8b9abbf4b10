"""Host synchronisations per strategy call do not grow with the batch (issue #16)."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune.bench.syncs import HostSyncCounter

BUILT_INS = sorted(s for s in vtprune.list_strategies() if vtprune.core.registry.default_registry().source("strategy", s).startswith("vtprune"))
LIMIT = 4
"""Issue #16's ceiling. Today every built-in makes 3 reads per call: the contract verdict of
all three stages (one read), the selection's width and the host budget's width; see
docs/benchmarks.md, section 2b."""


def context(batch: int, ragged: bool = False) -> vtprune.PruneContext:
    g = torch.Generator().manual_seed(batch)
    valid = torch.rand(batch, 144, generator=g) > 0.2 if ragged else None
    return vtprune.PruneContext.create(
        torch.randn(batch, 144, 32, generator=g), keep=0.25, valid=valid,
        image=torch.rand(batch, 3, 168, 168, generator=g), attention=torch.rand(batch, 144, generator=g),
        text_features=torch.randn(batch, 5, 32, generator=g), text_valid=torch.rand(batch, 5, generator=g) > 0.3,
        cls_attention=torch.rand(batch, 4, 144, generator=g),
        text_attention=torch.rand(batch, 2, 5, 144, generator=g).softmax(dim=-1),
    )


def syncs(name: str, ctx: vtprune.PruneContext) -> int:
    strategy = vtprune.get_strategy(name)
    strategy(ctx)  # warm caches (lattices, grid cells)
    with HostSyncCounter() as counter:
        strategy(ctx)
    return counter.count


def test_every_built_in_is_covered():
    assert {"altp", "altp_ddc", "divprune", "pool", "uniform", "random", "fastv", "pyramiddrop", "visionzip", "dart", "sparsevlm"} <= set(BUILT_INS)


@pytest.mark.parametrize("name", BUILT_INS)
@pytest.mark.parametrize("ragged", [False, True])
def test_host_syncs_do_not_grow_with_the_batch(name, ragged):
    counts = {b: syncs(name, context(b, ragged)) for b in (4, 16)}
    assert counts[4] == counts[16], counts
    assert counts[16] <= LIMIT, counts


def test_the_counter_sees_a_per_sample_loop():
    def looping(ctx):
        return [int(v) for v in ctx.features[:, 0, 0]]  # one scalar read per sample

    four, sixteen = context(4), context(16)
    with HostSyncCounter() as small:
        looping(four)
    with HostSyncCounter() as big:
        looping(sixteen)
    assert (small.count, big.count) == (4, 16)


def cuda_syncs(name: str, ctx: vtprune.PruneContext) -> int:
    """Synchronisations CUDA itself reports (``set_sync_debug_mode("warn")``) for one call."""
    import warnings

    strategy = vtprune.get_strategy(name)
    strategy(ctx)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            strategy(ctx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", BUILT_INS)
def test_cuda_reports_the_same_small_number_of_syncs(name):
    """On a GPU, CUDA's own sync detector (not our counter) sees <= LIMIT syncs per call,
    the same at batch 4 and 16 (default backends: torch SLIC, batched farthest points)."""
    counts = {b: cuda_syncs(name, context(b, ragged=True).to("cuda")) for b in (4, 16)}
    assert counts[4] == counts[16], counts
    assert counts[16] <= LIMIT, counts
