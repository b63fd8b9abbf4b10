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

from ..core import ContractError

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
    norms = torch.linalg.vector_norm(x, dim=-1)  # [M] (host memory: checked with numpy)
    if not np.isfinite(norms.numpy()).all():  # rare: only then pay for a full pass
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



def farthest_points_raw(x: torch.Tensor, norms: np.ndarray, quota: int, first: int) -> np.ndarray:
    """:func:`farthest_points` on raw rows: ``x`` [S, D] float32 (any scale, finite, norms
    below :data:`NORM_LIMIT`), ``norms`` [S] float32 their norms clamped to >= 1e-12; the
    distance of rows i, j is 1 - x_i . x_j / (|x_i| |x_j|). No normalised copy of the rows:
    each step is one matrix-vector product on ``x`` itself. Same picks as
    :func:`farthest_points` on the unit rows, up to rounding (tie-free inputs: the same)."""
    s = int(x.shape[0])
    picks = np.empty(quota, dtype=np.int64)
    if quota == 0:
        return picks
    picks[0] = first
    mind = np.empty(s, dtype=np.float32)
    dist = np.empty(s, dtype=np.float32)
    p = first
    for i in range(1, quota):
        np.divide(torch.mv(x, x[p]).numpy(), norms, out=dist)
        np.divide(dist, norms[p], out=dist)
        if i == 1:
            np.subtract(1.0, dist, out=mind)
        else:
            np.subtract(1.0, dist, out=dist)
            np.minimum(mind, dist, out=mind)
        mind[p] = -np.inf
        p = int(mind.argmax())
        picks[i] = p
    return picks


# -- batched ------------------------------------------------------------------------------------


def unit_rows_batched(features: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> new float32 unit rows on the same device; zero rows stay zero, non-finite
    entries count as 0 and rows whose norm overflows are rescaled first (as :func:`unit_rows`).
    One host read (is every norm finite?) decides whether the rare repair pass runs."""
    x = features.detach().float()
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [B, N, 1]
    if not bool(torch.isfinite(norms).all()):
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        big = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
        direct = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        x = torch.where(torch.isfinite(direct), x, x / big)  # rescale rows whose norm overflows
        norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / norms.clamp_min(1e-12)


CPU_CHUNK_BYTES = 8 * 2**20
"""On the CPU, samples are processed in chunks whose unit rows fit in about this many bytes,
so each step's products stay in cache (faster than one batch-sized product, docs/altp.md);
on an accelerator the whole batch is one chunk."""


def farthest_points_batched(
    unit: torch.Tensor,
    regions: torch.Tensor,
    quotas: torch.Tensor,
    priority: torch.Tensor,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy max-min picks inside every region of every sample, all at once.

    Args:
        unit: [B, N, D] float32 unit rows (:func:`unit_rows_batched`).
        regions: [B, N] long region id 0..R-1, -1 = never pick.
        quotas: [B, R] long picks per region (<= region size; checked by the caller).
        priority: [B, N] float, finite; tie-break order inside a region is priority
            descending, then lower token index.
        first: [B, R] long token index of each region's first pick, or None = the region's
            highest-priority token.

    Returns [B, N] bool: exactly ``quotas[b, r]`` tokens of region r of sample b. Step i picks,
    in every region still short, the token farthest (1 - dot) from its nearest pick (ties:
    earlier in the tie-break order). Steps = the largest quota; each step multiplies the rows
    by the newest picks of the regions still picking (one batched matmul). The quotas are read
    to the host once, to size those products.
    """
    b, n, d = unit.shape
    if unit.device.type == "cpu" and b > 1:
        step = max(1, CPU_CHUNK_BYTES // max(1, n * d * unit.element_size()))
        if step < b:
            parts = [
                _farthest(unit[i : i + step], regions[i : i + step], quotas[i : i + step], priority[i : i + step],
                          None if first is None else first[i : i + step])
                for i in range(0, b, step)
            ]
            return torch.cat(parts)
    return _farthest(unit, regions, quotas, priority, first)


def _farthest(
    unit: torch.Tensor,
    regions: torch.Tensor,
    quotas: torch.Tensor,
    priority: torch.Tensor,
    first: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`farthest_points_batched` on one chunk of samples."""
    b, n, dims = unit.shape
    r = quotas.shape[1]
    dev = unit.device
    quotas = quotas.to(dev)
    member = regions >= 0
    reg = torch.where(member, regions, r)  # [B, N], r = no region
    # tie-break order: by region, priority descending, index ascending (stable sorts)
    by_prio = torch.sort(priority, dim=1, descending=True, stable=True).indices
    order = by_prio.gather(1, torch.sort(reg.gather(1, by_prio), dim=1, stable=True).indices)  # [B, N]
    reg_sorted = reg.gather(1, order)
    counts = torch.zeros(b, r + 1, dtype=torch.long, device=dev).scatter_add_(1, reg, torch.ones_like(reg))
    starts = torch.cumsum(counts, dim=1) - counts  # [B, R+1]
    positions = torch.arange(n, device=dev).expand(b, n)
    rank = torch.empty_like(order).scatter_(1, order, positions - starts.gather(1, reg_sorted))
    q_all = torch.cat([quotas, torch.zeros(b, 1, dtype=torch.long, device=dev)], 1)  # [B, R+1]
    q_tok = q_all.gather(1, reg)  # [B, N]
    full_tok = member & (q_tok == counts.gather(1, reg))
    taken = full_tok & (q_tok > 0)
    if first is None:
        first_tok = member & (rank == 0) & (q_tok > 0)
    else:
        first_tok = torch.zeros(b, n, dtype=torch.bool, device=dev)
        has = quotas > 0
        first_tok.scatter_(1, torch.where(has, first.to(dev), 0), has)
        first_tok &= member
    taken |= first_tok
    # regions that choose: quota >= 2 and not kept whole; read once to the host
    choosing = (q_all >= 2) & (q_all < counts)
    choosing[:, r] = False
    # the one host read: quotas of the choosing regions and tokens per region, [2, B, R+1]
    q_host, live_tokens = torch.stack([torch.where(choosing, q_all, 0), counts]).cpu()
    max_q = int(q_host.max()) if q_host.numel() else 0
    if max_q < 2:
        return taken
    pick_of_region = torch.full((b, r + 1), n, dtype=torch.long, device=dev).scatter_reduce_(
        1, reg, torch.where(first_tok, positions, n), "amin"
    )
    flat = torch.cat([unit, torch.zeros(b, 1, dims, dtype=unit.dtype, device=dev)], 1).reshape(b * (n + 1), dims)
    row0 = (torch.arange(b, device=dev) * (n + 1))[:, None]
    mind = torch.full((b, n), torch.inf, device=dev)
    big_rank = n + 1
    for step in range(1, max_q):
        # tokens of the regions still picking, compacted per sample (sizes known on the host)
        live_host = q_host > step  # [B, R+1]
        width = int(torch.where(live_host, live_tokens, 0).sum(dim=1).max())
        live_tok = torch.zeros(b, r + 1, dtype=torch.bool, device=dev)
        live_tok = live_tok.copy_(live_host.to(dev)).gather(1, reg) & member  # [B, N]
        ids = torch.sort(live_tok.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
        ok = live_tok.gather(1, ids)  # [B, W]
        newest = pick_of_region.gather(1, reg.gather(1, ids))  # [B, W] newest pick of each token's region
        rows = flat.index_select(0, (ids + row0).reshape(-1)).view(b, width, dims)
        picks = flat.index_select(0, (newest + row0).reshape(-1)).view(b, width, dims)
        dot = torch.linalg.vecdot(rows, picks)  # [B, W]; row-wise: no dependence on batch-mates
        upd = torch.where(ok, torch.minimum(mind.gather(1, ids), 1.0 - dot), mind.gather(1, ids))
        mind = mind.scatter(1, ids, upd)
        live = live_tok & ~taken
        score = torch.where(live, mind, -torch.inf)
        best = torch.full((b, r + 1), -torch.inf, device=dev).scatter_reduce_(1, reg, score, "amax")
        winner = live & (score == best.gather(1, reg))
        first_rank = torch.full((b, r + 1), big_rank, dtype=torch.long, device=dev).scatter_reduce_(
            1, reg, torch.where(winner, rank, big_rank), "amin"
        )
        chosen = winner & (rank == first_rank.gather(1, reg))  # one per region still picking
        taken |= chosen
        pick_of_region = torch.full((b, r + 1), n, dtype=torch.long, device=dev).scatter_reduce_(
            1, reg, torch.where(chosen, positions, n), "amin"
        )
    return taken


# -- grouped, CPU -------------------------------------------------------------------------------


NORM_LIMIT = 1.0e18
"""Rows with a norm above this (or non-finite entries) make a sample take the reference
per-region path (:func:`unit_rows` repairs them; raw products could overflow)."""


class _Runs:
    """Host bookkeeping of :func:`farthest_points_grouped`: every sample's tokens sorted by
    (sample, region, priority descending, index) into one flat order of B * N positions.

    Attributes (numpy): ``tok`` [B*N] flat token index (b * N + t) at each position; ``seg``
    [B*N] segment id b * (R + 1) + region (R = invalid tokens) at each position;
    ``counts``, ``starts``, ``quota`` [B * (R + 1)] per segment.
    """

    def __init__(self, regs: np.ndarray, quotas: np.ndarray, prio: np.ndarray) -> None:
        b, n = regs.shape
        r = quotas.shape[1]
        key = np.where(regs >= 0, regs, r)  # [B, N]; invalid tokens last
        index = np.broadcast_to(np.arange(n), (b, n))
        order = np.lexsort((index, -prio, key), axis=-1)  # [B, N] per sample
        self.n, self.r = n, r
        self.tok = (order + (np.arange(b) * n)[:, None]).reshape(-1)
        self.seg = (np.take_along_axis(key, order, axis=1) + (np.arange(b) * (r + 1))[:, None]).reshape(-1)
        self.counts = np.bincount(self.seg, minlength=b * (r + 1))
        self.starts = np.cumsum(self.counts) - self.counts
        self.quota = np.concatenate([quotas, np.zeros((b, 1), dtype=np.int64)], axis=1).reshape(-1)

    def check(self) -> None:
        over = np.flatnonzero(self.quota > self.counts)
        if over.size:
            i, bad = divmod(int(over[0]), self.r + 1)
            raise ContractError(
                f"region {bad} of sample {i} has {int(self.counts[over[0]])} tokens but quota "
                f"{int(self.quota[over[0]])}; quotas must not exceed region sizes"
            )


def _run_dots(rows: torch.Tensor, picks: torch.Tensor, runs: np.ndarray) -> torch.Tensor:
    """Products of each run of ``rows`` [M, D] with its pick: run k is rows
    ``runs[k]:runs[k + 1]`` and its pick is ``picks[k]`` [D]; -> [M]. One matrix-vector
    product per run (faster than a padded batched product, an expanded copy of the picks, or
    one product against every pick)."""
    bounds = runs.tolist()
    return torch.cat([torch.mv(rows[lo:hi], picks[k]) for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))])


def _first_max(values: np.ndarray, run_starts: np.ndarray) -> np.ndarray:
    """Index of the first maximum of each run of ``values`` (runs start at ``run_starts``)."""
    best = np.maximum.reduceat(values, run_starts)
    lengths = np.diff(np.append(run_starts, values.size))
    where = np.where(values == np.repeat(best, lengths), np.arange(values.size), values.size)
    return np.minimum.reduceat(where, run_starts)


def farthest_points_grouped(
    features: torch.Tensor, regions: torch.Tensor, quotas: torch.Tensor, priority: torch.Tensor
) -> torch.Tensor:
    """Greedy max-min picks inside every region of every sample, on the CPU.

    Args:
        features: [B, N, D] token features (cosine distance is used).
        regions: [B, N] long region id 0..R-1, -1 = never pick.
        quotas: [B, R] long picks per region (<= region size, checked here).
        priority: [B, N] float, finite; tie-break order inside a region is priority
            descending, then lower token index; a region's first pick is its first token
            in that order.

    Returns [B, N] bool (CPU), exactly ``quotas[b, r]`` True entries in region r of sample b.

    One host sort orders every sample's tokens by (region, priority descending, index).
    Regions kept whole are taken as they are; the others with quota >= 2 advance together,
    one pick per step (steps = the largest quota). Per sample and step, the rows of its
    regions still picking are gathered (once for the first step, into a reused buffer) and
    each region's run is one matrix-vector product with its newest pick (raw rows divided by
    the norms taken at the first gather: no normalised copy of the features); a few numpy
    operations over the whole batch then pick the first maximum of every region. A sample's
    products have shapes that depend on that sample alone, so its picks never depend on its
    batch-mates. Samples with non-finite features or norms above :data:`NORM_LIMIT` take the
    per-region reference path (:func:`unit_rows`, :func:`farthest_points`).
    """
    b, n = regions.shape
    taken = torch.zeros(b, n, dtype=torch.bool)
    if b == 0 or n == 0 or quotas.numel() == 0:
        return taken
    regs = regions.detach().cpu().long().numpy()
    quota_all = quotas.detach().cpu().long().numpy()
    r = quota_all.shape[1]
    if regs.size and int(regs.max()) >= r:
        raise ContractError(f"region id {int(regs.max())} has no quota (quotas has {r} regions)")
    prio = torch.nan_to_num(priority.detach().cpu().float(), nan=0.0, posinf=3.0e38, neginf=-3.0e38).numpy()
    runs = _Runs(regs, quota_all, prio)
    runs.check()
    full = (runs.quota == runs.counts) & (runs.quota > 0)
    first = (runs.quota > 0) & ~full
    picks = [runs.tok[np.repeat(full, runs.counts)], runs.tok[runs.starts[first]]]
    choosing = (runs.quota >= 2) & ~full
    if choosing.any():
        picks.extend(_grouped_steps(features.detach().cpu(), runs, choosing))
    taken.view(-1)[torch.from_numpy(np.concatenate(picks))] = True
    return taken


def _grouped_steps(feats: torch.Tensor, runs: _Runs, choosing: np.ndarray) -> list[np.ndarray]:
    """The greedy steps of :func:`farthest_points_grouped` for the ``choosing`` segments
    [B * (R + 1)] bool; returns the flat token indices picked after the first picks.

    First, per sample: its choosing rows are gathered once (in region order, into a buffer
    reused across samples: a fresh allocation of this size costs page faults), their norms
    taken, and the distances to each region's first pick computed. Then each step picks the
    first maximum of every live region over the whole batch; steps after the first gather
    only the rows of regions still picking.
    """
    b, n, d = feats.shape
    choosing = choosing.copy()
    pos_all = np.flatnonzero(choosing[runs.seg])  # every choosing row, sorted by sample
    bounds = np.searchsorted(runs.tok[pos_all] // n, np.arange(b + 1))
    mind = np.full(runs.tok.size, np.inf, dtype=np.float32)  # nearest-pick distance per position
    norm_pos = np.ones(runs.tok.size, dtype=np.float32)
    work = torch.empty(n, d, dtype=torch.float32)
    xs: dict[int, torch.Tensor] = {}
    out: list[np.ndarray] = []
    for i in np.flatnonzero(np.diff(bounds)).tolist():
        pos = pos_all[bounds[i] : bounds[i + 1]]
        x = feats[i].float()
        rows = torch.index_select(x, 0, torch.from_numpy(runs.tok[pos] - i * n), out=work[: pos.size])
        norms = torch.linalg.vector_norm(rows, dim=-1).numpy()
        if not np.isfinite(norms).all() or float(norms.max()) > NORM_LIMIT:
            segs = choosing.reshape(b, -1)[i].copy()
            out.append(_reference_sample(feats[i], runs, i, segs) + i * n)
            choosing.reshape(b, -1)[i] = False
            continue
        seg = runs.seg[pos]
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])  # each region's first pick
        dots = _run_dots(rows, rows[torch.from_numpy(starts)], np.append(starts, pos.size)).numpy()
        norms = np.maximum(norms, np.float32(1e-12))
        mind[pos] = 1.0 - dots / (norms * np.repeat(norms[starts], np.diff(np.append(starts, pos.size))))
        norm_pos[pos] = norms
        xs[i] = x
    if not choosing.any():
        return out
    newest = runs.starts.copy()  # position of each segment's newest pick
    mind[newest[choosing]] = -np.inf
    in_choosing = choosing[runs.seg]
    for step in range(1, int(runs.quota[choosing].max())):
        live_pos = np.flatnonzero(in_choosing & (runs.quota[runs.seg] > step))  # sorted by sample
        seg = runs.seg[live_pos]
        run_starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])  # one run per live region
        if step > 1:
            _update(feats, xs, runs, mind, norm_pos, live_pos, newest[seg[run_starts]], run_starts, work)
        winners = live_pos[_first_max(mind[live_pos], run_starts)]
        mind[winners] = -np.inf
        newest[seg[run_starts]] = winners
        out.append(runs.tok[winners])
    return out


def _update(
    feats: torch.Tensor,
    xs: dict[int, torch.Tensor],
    runs: _Runs,
    mind: np.ndarray,
    norm_pos: np.ndarray,
    live_pos: np.ndarray,
    pick_pos: np.ndarray,
    run_starts: np.ndarray,
    work: torch.Tensor,
) -> None:
    """Lower ``mind`` at the positions ``live_pos`` (one run per live region, starting at
    ``run_starts``) to their distance from their region's newest pick (position
    ``pick_pos`` [runs]), sample by sample."""
    n = feats.shape[1]
    rows_tok = runs.tok[live_pos]
    bounds = np.searchsorted(rows_tok // n, np.arange(feats.shape[0] + 1))
    run_bounds = np.searchsorted(run_starts, bounds)
    for i in np.flatnonzero(np.diff(bounds)).tolist():
        lo, hi, r0, r1 = int(bounds[i]), int(bounds[i + 1]), int(run_bounds[i]), int(run_bounds[i + 1])
        x = xs[i]
        rows = torch.index_select(x, 0, torch.from_numpy(rows_tok[lo:hi] - i * n), out=work[: hi - lo])
        picks = x[torch.from_numpy(runs.tok[pick_pos[r0:r1]] - i * n)]
        local = np.append(run_starts[r0:r1], hi) - lo
        dots = _run_dots(rows, picks, local).numpy()
        pos = live_pos[lo:hi]
        scale = norm_pos[pos] * np.repeat(norm_pos[pick_pos[r0:r1]], np.diff(local))
        mind[pos] = np.minimum(mind[pos], 1.0 - dots / scale)


def _reference_sample(x: torch.Tensor, runs: _Runs, i: int, choosing: np.ndarray) -> np.ndarray:
    """Picks after the first of sample ``i``'s ``choosing`` segments [R + 1] by the per-region
    reference kernel (:func:`unit_rows` + :func:`farthest_points`); token indices."""
    base = i * (runs.r + 1)
    out = [np.empty(0, dtype=np.int64)]
    for s in (np.flatnonzero(choosing) + base).tolist():
        lo = int(runs.starts[s])
        rows = runs.tok[lo : lo + int(runs.counts[s])] - i * runs.n
        got = farthest_points(unit_rows(x, torch.from_numpy(rows)), int(runs.quota[s]), 0)
        out.append(rows[got[1:]])
    return np.concatenate(out)


__all__ = [
    "GRAM_RATIO",
    "NORM_LIMIT",
    "farthest_points",
    "farthest_points_batched",
    "farthest_points_grouped",
    "farthest_points_raw",
    "unit_rows",
    "unit_rows_batched",
]
