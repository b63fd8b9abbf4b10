"""A metric against keep, one line per strategy: the figure of a GranD-f or RefCOCO run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_keeps(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: str | Path,
               title: str = "") -> Path | None:
    """Plot each metric (one panel each) against ``keep`` for every strategy of ``rows`` (the
    rows of ``grandf_run.run`` or ``refer.run``: ``strategy``, ``keep`` and the metric), the
    unpruned value as a dashed line; writes ``path`` (PNG) and returns it, or None when no
    metric has a value to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.5), squeeze=False)
    strategies = sorted({r["strategy"] for r in rows if r["keep"] is not None})
    for ax, metric in zip(axes[0], shown):
        for strategy in strategies:
            points = sorted((r["keep"], r[metric]) for r in rows
                            if r["strategy"] == strategy and r["keep"] is not None and r.get(metric) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=strategy)
        base = [r[metric] for r in rows if r["keep"] is None and r.get(metric) is not None]
        if base:
            ax.axhline(base[0], color="black", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xlabel("keep (fraction of visual tokens)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
