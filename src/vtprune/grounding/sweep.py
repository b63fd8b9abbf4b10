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

from .bench import METRICS, bootstrap, evaluate_gcg
from .evaluate import split_items
from .model import GroundingModel

TUNING_SPLITS = ("val",)


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, in the grid's order: {"a": [1, 2]} -> [{a: 1}, {a: 2}]."""
    empty = [name for name, values in grid.items() if not values]
    if empty:
        raise ValueError(f"parameters {empty} have no values to try; give at least one each")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


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
    bad = [k for k in keeps if not 0.0 < k <= 1.0]
    if bad or not keeps:
        raise ValueError(f"keep ratios must lie in (0, 1], got {list(keeps)}")
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
    bar = tqdm(total=len(items) * (1 + len(combos) * len(keeps)), disable=not progress,
               unit="scene", desc=f"{strategy} sweep")
    started = time.time()
    unpruned = bootstrap(evaluate_gcg(model, items, batch_size, bar.update))
    rows: list[dict[str, Any]] = []
    for params in combos:
        for keep in keeps:
            bar.set_postfix_str(f"{params} keep={keep}")
            with attach(model.llava, strategy, keep=keep, **params):
                scores = bootstrap(evaluate_gcg(model, items, batch_size, bar.update))
            rows.append({"params": params, "keep": keep, "scores": scores})
    bar.close()
    means = [float(np.mean([r["scores"]["miou"] for r in rows if r["params"] == p]))
             for p in combos]
    best = int(np.argmax(means))
    meta = {"strategy": strategy, "split": split, "scenes": len(items), "keeps": list(keeps),
            "grid": {k: list(v) for k, v in grid.items()},
            "seconds": round(time.time() - started, 1),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "torch_threads": torch.get_num_threads()}
    return {"meta": meta, "unpruned": unpruned, "rows": rows,
            "best": {"params": combos[best], "mean_miou": means[best]}}


def format_sweep_markdown(result: dict[str, Any]) -> str:
    """A table: one row per parameter combination, mIoU ± se per keep, mean; best in bold."""
    meta = result["meta"]
    names = list(meta["grid"])
    keeps = meta["keeps"]
    head = names + [f"mIoU keep {k:g}" for k in keeps] + ["mean mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_params: dict[str, dict[float, dict[str, float]]] = {}
    order: list[dict[str, Any]] = []
    for r in result["rows"]:
        key = repr(sorted(r["params"].items()))
        if key not in by_params:
            order.append(r["params"])
        by_params.setdefault(key, {})[r["keep"]] = r["scores"]
    for params in order:
        scores = by_params[repr(sorted(params.items()))]
        mean = float(np.mean([scores[k]["miou"] for k in keeps]))
        mark = "**" if params == result["best"]["params"] else ""
        cells = [f"{mark}{params[n]}{mark}" for n in names]
        cells += [f"{scores[k]['miou']:.3f} ± {scores[k]['miou_se']:.3f}" for k in keeps]
        cells.append(f"{mark}{mean:.3f}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    u = result["unpruned"]
    metrics = ", ".join(f"{m} {u[m]:.3f}" for m in METRICS)
    return "\n".join(lines) + (
        f"\n\n{meta['strategy']} on the first {meta['scenes']} `{meta['split']}` scenes; "
        f"unpruned: {metrics}; ± = scene-bootstrap standard error; best (bold) = highest mean "
        f"mIoU over keeps; {meta['seconds']} s.")
