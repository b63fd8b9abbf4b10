"""Selection overhead: how long each registered strategy takes to decide what to keep.

Times ``strategy(ctx)`` alone — scoring, allocation (SLIC included) and selection, with the
contract checks on, as a backbone adapter calls it — on one image at two sizes: 336 x 336 with
a 24 x 24 grid (576 tokens, LLaVA-1.5) and 672 x 672 with 48 x 48 (2304 tokens). Strategies
with a SLIC backend (ALTP and its hybrids) are timed with fast-slic and with scikit-image.
Features are random [1, N, dim] (default dim 1024, CLIP ViT-L/14's width); attention is the
pixel stand-in of :mod:`vtprune.viz`. One torch thread by default.

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


def _context(image: torch.Tensor, side: int, grid: int, keep: Keep, dim: int, seed: int) -> PruneContext:
    from ..viz import standin_attention

    img = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    feats = torch.randn(1, grid * grid, dim, generator=torch.Generator().manual_seed(seed))
    att = standin_attention(img, (grid, grid))[None]
    return PruneContext.create(feats, grid=(grid, grid), keep=keep, image=img[None], attention=att)


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


def run_overhead(
    strategies: Sequence[str] | None = None,
    keep: Keep = 0.1,
    sizes: Sequence[tuple[int, int]] = SIZES,
    repeats: int | None = None,
    warmup: int = 3,
    dim: int = 1024,
    image: str = "astronaut",
    threads: int | None = 1,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """One row per (strategy, token count, SLIC backend): wall-clock median, p10 and p90
    milliseconds, and the median process CPU time.

    Args:
        strategies: names (default: every registered strategy).
        keep: budget for every strategy (default 0.1).
        sizes: (image side, grid side) pairs (default 336/24 and 672/48).
        repeats: timed calls per row (default 30; 5 with ``quick``).
        warmup: untimed calls first. dim: feature width. image: bundled name or path.
        threads: torch threads while timing (None = leave as is).
        quick: only the first size and 5 repeats.
    """
    from ..viz import load_image

    names = list(strategies) if strategies else list_strategies()
    reps = repeats if repeats is not None else (5 if quick else 30)
    if reps < 1:
        raise ContractError(f"repeats must be >= 1, got {reps}")
    grid_sizes = list(sizes)[:1] if quick else list(sizes)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        base = load_image(image, size=max(s for s, _ in grid_sizes))
        rows = []
        for side, grid in grid_sizes:
            ctx = _context(base, side, grid, keep, dim, seed=side)
            for name in names:
                for backend in _backends(name):
                    params = {} if backend == "-" else {"backend": backend}
                    times, cpu = time_strategy(name, ctx, reps, warmup, **params)
                    rows.append({
                        "strategy": name,
                        "tokens": grid * grid,
                        "image": f"{side}x{side}",
                        "backend": backend,
                        "kept": int(ctx.budget[0]),
                        "median_ms": round(statistics.median(times), 3),
                        "p10_ms": round(_percentile(times, 0.1), 3),
                        "p90_ms": round(_percentile(times, 0.9), 3),
                        "cpu_median_ms": round(statistics.median(cpu), 3),
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
    head = "| strategy | tokens | image | SLIC backend | kept | median ms | p10 ms | p90 ms | CPU median ms |"
    lines = [head, "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = r.get("cpu_median_ms")
        lines.append(
            f"| {r['strategy']} | {r['tokens']} | {r['image']} | {r['backend']} | {r['kept']} | "
            f"{r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{'-' if cpu is None else f'{cpu:.2f}'} |"
        )
    return "\n".join(lines)


__all__ = ["SIZES", "format_table", "run_overhead", "time_strategy"]
