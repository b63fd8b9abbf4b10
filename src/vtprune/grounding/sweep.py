"""Choose a strategy's parameters on the validation split (``vtprune bench grounding-sweep``).

Every combination of the given parameter values runs through the same path as the benchmark
(``attach`` on the stock LLaVA, ``generate`` with the KV cache, ``[SEG]`` states from the
generation pass) at each keep ratio. The sweep refuses the test splits: defaults chosen on
test would make the test table a measure of the tuning, not of the method.

Example::

    result = run_param_sweep("altp", {"segment_ratio": [0.25, 0.5, 1.0],
                                      "density": ["dispersion", "gradient"]},
                             keeps=(0.25, 0.1), split="val")
    result["best"]   # {"params": {...}, "mean_miou": ...}: the highest mIoU averaged over keeps
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import metrics
from .bench import BOOTSTRAP, METRICS, bootstrap, check_keeps, evaluate_gcg
from .evaluate import split_items
from .model import GroundingModel
from .parallel import is_main

TUNING_SPLITS = ("val",)


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, in the grid's order: {"a": [1, 2]} -> [{a: 1}, {a: 2}]."""
    empty = [name for name, values in grid.items() if not values]
    if empty:
        raise ValueError(f"parameters {empty} have no values to try; give at least one each")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def paired_delta(a: Sequence[Sequence[metrics.ImageResult]],
                 b: Sequence[Sequence[metrics.ImageResult]], n: int = BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float]:
    """Mean-over-keeps mIoU of ``a`` minus that of ``b`` and its paired standard error.

    ``a[k]``/``b[k]``: per-image results at keep k, on the same scenes in the same order. The
    error comes from a scene bootstrap that resamples the same scenes for both (and for every
    keep), so it is the error of the *difference*, smaller than the two rows' errors combined.
    """
    def sums(runs: Sequence[Sequence[metrics.ImageResult]]) -> np.ndarray:
        return np.array([[r.matched_iou.sum() for r in run] for run in runs])   # [K, S]

    counts = np.array([r.matched_iou.size for r in a[0]], dtype=np.float64)     # [S]
    diff = sums(a) - sums(b)                                                    # [K, S]
    point = float((diff.sum(1) / counts.sum()).mean())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        pick = rng.integers(0, counts.size, counts.size)
        draws.append(float((diff[:, pick].sum(1) / counts[pick].sum()).mean()))
    return point, float(np.std(draws, ddof=1))


def run_param_sweep(strategy: str, grid: Mapping[str, Sequence[Any]],
                    keeps: Sequence[float] = (0.25, 0.1), split: str = "val",
                    limit: int | None = None, model: GroundingModel | None = None,
                    batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """GCG scores of ``strategy`` for every parameter combination of ``grid`` at every keep.

    Returns ``{"meta", "unpruned", "rows", "best"}``; each row holds ``params``, ``keep`` and
    mIoU/AP50/recall with scene-bootstrap errors; ``best`` is the combination with the highest
    mIoU averaged over ``keeps``. Raises ``ValueError`` for a test split, an unknown strategy,
    a parameter the strategy rejects (checked before any scene runs) or keeps outside (0, 1].
    """
    import vtprune
    from vtprune.backbones import attach

    if split not in TUNING_SPLITS:
        raise ValueError(f"parameter sweeps run on {TUNING_SPLITS} only, got split={split!r}: "
                         "choosing defaults on test would tune to the test set")
    if strategy not in vtprune.list_strategies():
        raise ValueError(f"unknown strategy {strategy!r}; registered: {vtprune.list_strategies()}")
    check_keeps(keeps)
    combos = combinations(grid)
    for params in combos:  # fail fast on a bad value, before minutes of evaluation
        try:
            vtprune.get_strategy(strategy, **params)
        except Exception as exc:
            raise ValueError(f"{strategy} rejects {params}: {exc}") from exc
    if model is None:
        from .model import load_pretrained
        model = load_pretrained()
    model.eval()
    items = split_items(split, limit, model.cfg.scene)
    from tqdm import tqdm
    bar = tqdm(total=len(items) * (1 + len(combos) * len(keeps)), disable=not progress or not is_main(),
               unit="scene", desc=f"{strategy} sweep")
    started = time.time()
    unpruned = bootstrap(evaluate_gcg(model, items, batch_size, bar.update))
    rows: list[dict[str, Any]] = []
    runs: list[list[list[metrics.ImageResult]]] = []     # [combo][keep] -> per-image results
    for params in combos:
        runs.append([])
        for keep in keeps:
            bar.set_postfix_str(f"{params} keep={keep}")
            with attach(model.llava, strategy, keep=keep, **params):
                runs[-1].append(evaluate_gcg(model, items, batch_size, bar.update))
            rows.append({"params": params, "keep": keep, "scores": bootstrap(runs[-1][-1])})
    bar.close()
    means = [float(np.mean([r["scores"]["miou"] for r in rows if r["params"] == p]))
             for p in combos]
    best = int(np.argmax(means))
    for i, params in enumerate(combos):
        delta, se = paired_delta(runs[i], runs[best])
        for r in rows:
            if r["params"] == params:
                r["delta_vs_best"], r["delta_se"] = delta, se
    meta = {"strategy": strategy, "split": split, "scenes": len(items), "keeps": list(keeps),
            "grid": {k: list(v) for k, v in grid.items()},
            "seconds": round(time.time() - started, 1),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "torch_threads": torch.get_num_threads()}
    return {"meta": meta, "unpruned": unpruned, "rows": rows,
            "best": {"params": combos[best], "mean_miou": means[best]}}


def format_sweep_markdown(result: dict[str, Any]) -> str:
    """A table: one row per parameter combination, mIoU ± se per keep, mean, and the paired
    difference to the best (± its paired standard error); best in bold."""
    meta = result["meta"]
    names = list(meta["grid"])
    keeps = meta["keeps"]
    head = names + [f"mIoU keep {k:g}" for k in keeps] + ["mean mIoU", "vs best (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_params: dict[str, dict[float, dict[str, Any]]] = {}
    order: list[dict[str, Any]] = []
    for r in result["rows"]:
        key = repr(sorted(r["params"].items()))
        if key not in by_params:
            order.append(r["params"])
        by_params.setdefault(key, {})[r["keep"]] = r
    for params in order:
        cell = by_params[repr(sorted(params.items()))]
        scores = {k: cell[k]["scores"] for k in keeps}
        first = cell[keeps[0]]
        mean = float(np.mean([scores[k]["miou"] for k in keeps]))
        mark = "**" if params == result["best"]["params"] else ""
        cells = [f"{mark}{params[n]}{mark}" for n in names]
        cells += [f"{scores[k]['miou']:.3f} ± {scores[k]['miou_se']:.3f}" for k in keeps]
        cells.append(f"{mark}{mean:.3f}{mark}")
        cells.append("-" if mark else f"{first['delta_vs_best']:+.3f} ± {first['delta_se']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    u = result["unpruned"]
    summary = ", ".join(f"{m} {u[m]:.3f}" for m in METRICS)
    return "\n".join(lines) + (
        f"\n\n{meta['strategy']} on the first {meta['scenes']} `{meta['split']}` scenes; "
        f"unpruned: {summary}; ± = scene-bootstrap standard error; best (bold) = highest mean "
        f"mIoU over keeps; vs best = paired difference of that mean (the same scenes "
        f"resampled for both); {meta['seconds']} s.")
