"""Selection overhead: how long each registered strategy takes to decide what to keep.

Times ``strategy(ctx)`` alone — scoring, allocation (SLIC included) and selection, with the
contract checks on, as a backbone adapter calls it — on batches of the bundled images at two
sizes: 336 x 336 with a 24 x 24 grid (576 tokens, LLaVA-1.5) and 672 x 672 with 48 x 48 (2304
tokens), or with ``canvas`` images of different sizes on a canvas (dynamic resolution); every
strategy of a row group runs once per round, interleaved, and each row reports
its per-sample cost as a multiple of FastV's in the same run, plus host syncs per call. Strategies
with a SLIC backend (ALTP and its hybrids) are timed with fast-slic and with scikit-image.
Features are random [1, N, dim] (default dim 1024, CLIP ViT-L/14's width); attention (and
[CLS] attention) is the pixel stand-in of :mod:`vtprune.viz`; the instruction is 16 random
rows of the features' width, and its attention to the visual tokens (``text_attention``, 32
heads as LLaVA-1.5-7B) is the stand-in attention perturbed row by row, half of each row's mass
on the visual tokens. One torch thread by default.

    rows = run_overhead(quick=True)
    print(format_table(rows))
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..core import ContractError, Keep, PruneContext, get_strategy, list_strategies

SIZES: tuple[tuple[int, int], ...] = ((336, 24), (672, 48))
"""(image side in pixels, tokens per grid side)."""
INSTRUCTION_TOKENS = 16
"""Rows of the random stand-in instruction (``text_features``) for instruction-conditioned
strategies; the pixel stand-in attention doubles as ``cls_attention``."""
TEXT_ATTENTION_HEADS = 32
"""Heads of the stand-in ``text_attention`` (LLaVA-1.5-7B's decoder)."""


def _backends(name: str) -> list[str]:
    """SLIC backends to time for ``name``: both if it takes a ``backend`` parameter."""
    from ..strategies.superpixels import fast_slic_available

    try:
        get_strategy(name, backend="skimage")
    except ContractError as err:
        if "has no parameter" in str(err):
            return ["-"]
        raise
    return (["fast_slic"] if fast_slic_available() else []) + ["skimage"]


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def canvas_grids(batch: int, grid: int) -> torch.Tensor:
    """Own token grids [batch, 2] of a canvas batch: row i is (grid - 2 (i mod 4), grid - 2
    ((i div 4) mod 4)), so 16 rows have 16 distinct grids (24 x 24 down to 18 x 18 on a 24
    grid), as a dynamic-resolution model (Qwen2-VL) sees images of different sizes."""
    rows = [(grid - 2 * (i % 4), grid - 2 * ((i // 4) % 4)) for i in range(batch)]
    return torch.tensor([(max(1, h), max(1, w)) for h, w in rows], dtype=torch.long)


def _context(
    images: Sequence[torch.Tensor], side: int, grid: int, keep: Keep, dim: int, seed: int, batch: int,
    canvas: bool = False,
) -> PruneContext:
    """A batch of ``batch`` samples cycling through ``images`` (resized to side x side). With
    ``canvas``, row i is its image resized to its own grid of :func:`canvas_grids` (same pixels
    per token) in the top-left block of a side x side canvas (``PruneContext.grids``)."""
    from ..core.types import grid_blocks
    from ..viz import standin_attention

    grids = canvas_grids(batch, grid) if canvas else torch.tensor([[grid, grid]] * batch, dtype=torch.long)
    patch = side // grid
    imgs = torch.zeros(batch, 3, side, side)
    att = torch.zeros(batch, grid * grid)
    for i, (h, w) in enumerate(grids.tolist()):  # building the input, not timed
        own = F.interpolate(images[i % len(images)][None], size=(h * patch, w * patch), mode="bilinear", align_corners=False)[0]
        imgs[i, :, : h * patch, : w * patch] = own
        att[i].view(grid, grid)[:h, :w] = standin_attention(own, (h, w)).view(h, w)
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, grid * grid, dim, generator=gen)
    text = torch.randn(batch, INSTRUCTION_TOKENS, dim, generator=gen)  # an instruction, LLM width
    shape = (batch, TEXT_ATTENTION_HEADS, INSTRUCTION_TOKENS, grid * grid)
    noise = torch.randn(shape, generator=gen)
    text_att = 0.5 * torch.softmax(torch.log(att.float().clamp(min=1e-12))[:, None, None, :] + noise, dim=-1)
    if canvas:  # no attention off a row's own block
        text_att = text_att * grid_blocks(grids, (grid, grid))[:, None, None, :]
    return PruneContext.create(
        feats, grid=(grid, grid), keep=keep, image=imgs, attention=att, cls_attention=att,
        text_features=text, text_valid=torch.ones(batch, INSTRUCTION_TOKENS, dtype=torch.bool),
        text_attention=text_att, **({"grids": grids} if canvas else {}),
    )


def time_strategy(
    name: str, ctx: PruneContext, repeats: int, warmup: int, **params: Any
) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU milliseconds of ``repeats`` calls of the strategy on ``ctx``.

    CPU time is reported too because on a shared machine wall-clock includes waiting for a
    core; with one thread, CPU time is the cost of the work itself.
    """
    strategy = get_strategy(name, **params)
    for _ in range(warmup):
        strategy(ctx)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        strategy(ctx)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
        wall.append((time.perf_counter() - start) * 1000.0)
    return wall, cpu


def _interleaved(
    configs: Sequence[tuple[str, str, Any]], ctx: PruneContext, repeats: int, warmup: int
) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """Time every (name, backend, strategy) once per round, ``repeats`` rounds: drift and
    load on a shared machine hit all rows alike, so their ratios stay fair."""
    for _, _, strategy in configs:
        for _ in range(warmup):
            strategy(ctx)
    times: dict[tuple[str, str], tuple[list[float], list[float]]] = {(n, b): ([], []) for n, b, _ in configs}
    for _ in range(repeats):
        for name, backend, strategy in configs:
            start, start_cpu = time.perf_counter(), time.process_time()
            strategy(ctx)
            times[(name, backend)][1].append((time.process_time() - start_cpu) * 1000.0)
            times[(name, backend)][0].append((time.perf_counter() - start) * 1000.0)
    return times


def run_overhead(
    strategies: Sequence[str] | None = None,
    keep: Keep = 0.1,
    sizes: Sequence[tuple[int, int]] = SIZES,
    repeats: int | None = None,
    warmup: int = 3,
    dim: int = 1024,
    image: str | None = None,
    threads: int | None = 1,
    quick: bool = False,
    batches: Sequence[int] = (1,),
    canvas: bool = False,
) -> list[dict[str, Any]]:
    """One row per (batch size, token count, strategy, SLIC backend): wall-clock median, p10
    and p90 milliseconds per call, the median process CPU time, milliseconds per sample, the
    ratio of that to FastV's in the same interleaved run, and host synchronisations per call.

    Args:
        strategies: names (default: every registered strategy; FastV is always timed too, as
            the reference of ``x_fastv``).
        keep: budget for every strategy (default 0.1).
        sizes: (image side, grid side) pairs (default 336/24 and 672/48).
        repeats: timed rounds per batch size and token count (default 30; 5 with ``quick``).
        warmup: untimed calls first. dim: feature width. image: one bundled name or path
            (default: the three bundled images, cycled over the batch).
        threads: torch threads while timing (None = leave as is).
        quick: only the first size and 5 repeats.
        batches: batch sizes (default 1).
        canvas: rows of different sizes on a canvas (:func:`canvas_grids`, as the Qwen2-VL
            adapter builds them) instead of one grid for the whole batch.
    """
    from ..viz import BUNDLED, load_image
    from .syncs import HostSyncCounter

    names = list(strategies) if strategies else list_strategies()
    reps = repeats if repeats is not None else (5 if quick else 30)
    if reps < 1:
        raise ContractError(f"repeats must be >= 1, got {reps}")
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ContractError(f"batch sizes must be positive ints, got {list(batches)}")
    grid_sizes = list(sizes)[:1] if quick else list(sizes)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        side_max = max(s for s, _ in grid_sizes)
        images = [load_image(name, size=side_max) for name in ([image] if image else BUNDLED)]
        configs = [
            (name, backend, get_strategy(name, **({} if backend == "-" else {"backend": backend})))
            for name in dict.fromkeys([*names, "fastv"])
            for backend in _backends(name)
        ]
        rows = []
        for batch in batches:
            for side, grid in grid_sizes:
                ctx = _context(images, side, grid, keep, dim, seed=side, batch=batch, canvas=canvas)
                distinct = len({tuple(g) for g in ctx.row_grids.tolist()})
                times = _interleaved(configs, ctx, reps, warmup)
                fastv = statistics.median(times[("fastv", "-")][1]) / batch
                for name, backend, strategy in configs:
                    if name not in names:
                        continue
                    wall, cpu = times[(name, backend)]
                    with HostSyncCounter() as syncs:
                        strategy(ctx)
                    per_sample = statistics.median(cpu) / batch
                    rows.append({
                        "strategy": name,
                        "batch": batch,
                        "tokens": grid * grid,
                        "image": f"{side}x{side}" + (f" canvas, {distinct} grids" if canvas else ""),
                        "distinct_grids": distinct,
                        "backend": backend,
                        "kept": int(ctx.budget[0]),
                        "median_ms": round(statistics.median(wall), 3),
                        "p10_ms": round(_percentile(wall, 0.1), 3),
                        "p90_ms": round(_percentile(wall, 0.9), 3),
                        "cpu_median_ms": round(statistics.median(cpu), 3),
                        "cpu_ms_per_sample": round(per_sample, 4),
                        "x_fastv": round(per_sample / fastv, 2) if fastv > 0 else None,
                        "host_syncs": syncs.count,
                        "repeats": reps,
                        "dim": dim,
                        "threads": torch.get_num_threads(),
                        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}",
                    })
        return rows
    finally:
        torch.set_num_threads(old_threads)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_overhead` rows."""
    head = (
        "| strategy | batch | tokens | image | SLIC backend | kept | median ms | p10 ms | p90 ms | "
        "CPU median ms | CPU ms / sample | x FastV / sample | host syncs |"
    )
    lines = [head, "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = r.get("cpu_median_ms")
        ratio = r.get("x_fastv")
        lines.append(
            f"| {r['strategy']} | {r.get('batch', 1)} | {r['tokens']} | {r['image']} | {r['backend']} | "
            f"{r['kept']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{'-' if cpu is None else f'{cpu:.2f}'} | {r.get('cpu_ms_per_sample', float('nan')):.3f} | "
            f"{'-' if ratio is None else f'{ratio:.1f}'} | {r.get('host_syncs', '-')} |"
        )
    return "\n".join(lines)


__all__ = ["SIZES", "canvas_grids", "format_table", "run_overhead", "time_strategy"]
