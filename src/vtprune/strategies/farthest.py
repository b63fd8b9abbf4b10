"""Farthest-point sampling on cosine distance: the one kernel behind ALTP's ``spread`` selector
and the ``divprune`` baseline.

One job: given unit feature rows in tie-break order and a first pick, greedily add the row
whose cosine distance (1 - dot product) to its nearest already-picked row is largest. Ties go
to the earlier row, so callers encode their tie rule in the row order (``spread``: score
descending, then lower token index; ``divprune``: token index).

Cost per step is one matrix-vector product through torch (which honours
``torch.set_num_threads``; numpy's BLAS would start its own threads) and three small numpy
ops; when many rows are picked, one Gram matrix up front is cheaper than the products, and
each step then reads one of its rows. Which path runs depends only on the region's own shape,
so a sample's picks never depend on the rest of its batch.
"""

from __future__ import annotations

import numpy as np
import torch

GRAM_RATIO = 6
"""Use one Gram matrix when ``quota * GRAM_RATIO >= rows`` (measured crossover, 1 thread)."""


def unit_rows(features: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Features [M, D] (or the ``rows`` [K] long of them) -> new contiguous float32 unit rows
    [M or K, D] on the CPU. Zero rows stay zero; non-finite entries count as 0 (a row whose
    norm overflows is rescaled first), so every distance is finite (in [0, 2] up to rounding).
    Never modifies ``features``."""
    src = features.detach()
    x = src.index_select(0, rows.to(src.device)) if rows is not None else src
    x = x.to("cpu", torch.float32)
    if x.data_ptr() == src.data_ptr():  # no copy was made: do not normalise the caller's tensor
        x = x.clone()
    norms = torch.linalg.vector_norm(x, dim=-1)  # [M]
    if not bool(torch.isfinite(norms).all()):  # rare: only then pay for a full pass
        x = torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
        norms = torch.linalg.vector_norm(x, dim=-1)
        big = ~torch.isfinite(norms)  # finite entries whose norm overflows: rescale those rows
        if bool(big.any()):
            x[big] = x[big] / x[big].abs().amax(dim=-1, keepdim=True)
            norms = torch.linalg.vector_norm(x, dim=-1)
    return x.div_(norms.clamp_min(1e-12)[:, None]).contiguous()


def farthest_points(unit: torch.Tensor, quota: int, first: int) -> np.ndarray:
    """Greedy max-min picks among the rows of ``unit``.

    Args:
        unit: [S, D] float32 unit rows (see :func:`unit_rows`), in tie-break order.
        quota: rows to pick, 0 <= quota <= S.
        first: row picked first (0 <= first < S when quota > 0).

    Returns int64 [quota]: row positions in pick order, all distinct. Step i picks the
    unpicked row with the largest distance to its nearest picked row (ties: earlier row).
    """
    s = int(unit.shape[0])
    picks = np.empty(quota, dtype=np.int64)
    if quota == 0:
        return picks
    picks[0] = first
    if quota == 1:
        return picks
    gram = (unit @ unit.T).numpy() if quota * GRAM_RATIO >= s else None
    mind = np.empty(s, dtype=np.float32)  # distance of each row to its nearest pick
    dist = np.empty(s, dtype=np.float32)
    p = first
    for i in range(1, quota):
        dot = gram[p] if gram is not None else torch.mv(unit, unit[p]).numpy()
        if i == 1:
            np.subtract(1.0, dot, out=mind)
        else:
            np.subtract(1.0, dot, out=dist)
            np.minimum(mind, dist, out=mind)
        mind[p] = -np.inf  # picked rows never win again (min keeps -inf)
        p = int(mind.argmax())  # first maximum: earlier row on ties
        picks[i] = p
    return picks


__all__ = ["GRAM_RATIO", "farthest_points", "unit_rows"]
