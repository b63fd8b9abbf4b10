"""Pictures of what a strategy keeps: the image, its token grid, the regions (superpixels
mapped onto the grid) where a strategy uses them, and the kept tokens highlighted.

Without a model there are no visual features and no attention, so :func:`standin_features`
and :func:`standin_attention` compute cheap documented stand-ins from the pixels; panels of
strategies that need attention are labelled "stand-in attention". matplotlib (Agg backend).

Example::

    from vtprune.viz import compare
    compare("astronaut", ["altp", "fastv", "uniform"], keep=0.1, out="compare.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .core import ContractError, Keep, PruneContext, get_strategy

BUNDLED = ("astronaut", "coffee", "chelsea")
"""Sample images shipped in ``vtprune/data`` (crops of scikit-image's samples, 336 x 336)."""


# -- images --------------------------------------------------------------------------------------


def bundled_image_path(name: str) -> Path:
    """Path of a bundled sample image (``astronaut``, ``coffee``, ``chelsea``)."""
    if name not in BUNDLED:
        raise ContractError(f"no bundled image {name!r}; bundled images: {', '.join(BUNDLED)}")
    return Path(str(resources.files("vtprune") / "data" / f"{name}.png"))


def load_image(image: str | Path, size: int = 336) -> torch.Tensor:
    """An image path or bundled name -> float [3, size, size] in [0, 1].

    Like CLIP's preprocessing: resize the shorter side to ``size`` (bicubic), centre-crop.
    """
    from PIL import Image

    path = Path(image)
    if not path.exists():
        if str(image) in BUNDLED:
            path = bundled_image_path(str(image))
        else:
            raise ContractError(
                f"image {str(image)!r} is neither a file nor a bundled image; bundled images: "
                f"{', '.join(BUNDLED)}"
            )
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    scale = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = rgb.size
    left, top = (w - size) // 2, (h - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# -- stand-in signals ------------------------------------------------------------------------------


def _patch_pool(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] -> per-patch means [h * w, C] (adaptive average pooling)."""
    return F.adaptive_avg_pool2d(x[None], grid)[0].flatten(1).T


def standin_features(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cheap token features from pixels, [h * w, 9]: per patch the mean and standard deviation
    of each colour channel and the mean |d/dy|, |d/dx| and squared gradient of the grey image;
    each column standardised over the tokens (zero mean, unit variance)."""
    x = image.float()
    mean = _patch_pool(x, grid)
    std = (_patch_pool(x * x, grid) - mean * mean).clamp_min(0).sqrt()
    grey = x.mean(dim=0, keepdim=True)
    gy = F.pad(grey[:, 1:] - grey[:, :-1], (0, 0, 0, 1)).abs()
    gx = F.pad(grey[:, :, 1:] - grey[:, :, :-1], (0, 1)).abs()
    grads = _patch_pool(torch.cat([gy, gx, gy * gy + gx * gx]), grid)
    feats = torch.cat([mean, std, grads], dim=1)
    return (feats - feats.mean(dim=0)) / feats.std(dim=0).clamp_min(1e-6)


def standin_attention(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A saliency proxy in place of a query's attention, [h * w] summing to 1.

    Per token: centre-surround colour contrast (distance of the patch's mean colour to the
    mean colour of its 5 x 5 token neighbourhood) plus gradient energy, each scaled to
    [0, 1], sharpened by a softmax at temperature 0.15. Not a model's attention: it only
    makes attention-based strategies runnable in pictures, and pictures label it.
    """
    h, w = grid
    x = image.float()
    mean = F.adaptive_avg_pool2d(x[None], grid)  # [1, 3, h, w]
    surround = F.avg_pool2d(F.pad(mean, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    contrast = (mean - surround).norm(dim=1).flatten()
    grey = x.mean(dim=0, keepdim=True)
    gy = F.pad(grey[:, 1:] - grey[:, :-1], (0, 0, 0, 1))
    gx = F.pad(grey[:, :, 1:] - grey[:, :, :-1], (0, 1))
    energy = _patch_pool(gy * gy + gx * gx, grid)[:, 0]

    def unit(v: torch.Tensor) -> torch.Tensor:
        return (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12)

    return torch.softmax((unit(contrast) + unit(energy)) / 0.15, dim=0)


# -- running strategies ------------------------------------------------------------------------------


@dataclass
class Panel:
    """One strategy's result on one image, ready to draw."""

    title: str
    kept: torch.Tensor  # [N] bool
    regions: torch.Tensor | None = None  # [N] long, -1 invalid
    standin_attention: bool = False
    notes: list[str] = field(default_factory=list)


def run_strategy(
    name: str, image: torch.Tensor, grid: tuple[int, int], keep: Keep, **params: Any
) -> Panel:
    """Prune one image [3, H, W] with the registered strategy ``name`` (one step, ``keep``),
    using stand-in features and, if the strategy needs it, stand-in attention."""
    strategy = get_strategy(name, **params)
    signals: dict[str, Any] = {"image": image[None]}
    standin = "attention" in strategy.needs
    if standin:
        signals["attention"] = standin_attention(image, grid)[None]
    if "cls_attention" in strategy.needs:
        signals["cls_attention"] = standin_attention(image, grid)[None]
        standin = True
    missing = set(strategy.needs) - set(signals)
    if missing:
        raise ContractError(f"strategy {name!r} needs {sorted(missing)}, which `vtprune show` cannot stand in for")
    ctx = PruneContext.create(standin_features(image, grid)[None], grid=grid, keep=keep, **signals)
    sel = strategy(ctx)
    scores = strategy.scorer(ctx)
    alloc = strategy.allocator(ctx, scores)
    n = grid[0] * grid[1]
    kept = sel.token_mask(n)[0]
    notes = []
    if sel.features is not None:
        notes.append("merging: kept = cell representatives")
    if strategy.schedule_factory is not None:
        notes.append("in-LLM method, shown as one step")
    return Panel(
        title=f"{name}  {int(kept.sum())}/{n}",
        kept=kept,
        regions=None if alloc.regions is None else alloc.regions[0].cpu(),
        standin_attention=standin,
        notes=notes,
    )


# -- drawing ---------------------------------------------------------------------------------------


def _region_edges(regions: torch.Tensor, grid: tuple[int, int]) -> list[tuple[list[float], list[float]]]:
    """Line segments (in token units) between neighbouring tokens of different regions."""
    h, w = grid
    r = regions.view(h, w).numpy()
    segs: list[tuple[list[float], list[float]]] = []
    ys, xs = np.nonzero(r[:, 1:] != r[:, :-1])  # vertical edges right of (y, x)
    segs += [([x + 1.0, x + 1.0], [y + 0.0, y + 1.0]) for y, x in zip(ys, xs)]
    ys, xs = np.nonzero(r[1:, :] != r[:-1, :])  # horizontal edges below (y, x)
    segs += [([x + 0.0, x + 1.0], [y + 1.0, y + 1.0]) for y, x in zip(ys, xs)]
    return segs


def draw_panel(ax: Any, image: torch.Tensor, grid: tuple[int, int], panel: Panel | None) -> None:
    """Draw one panel on a matplotlib axis: image, grid, regions, kept tokens; title."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    h, w = grid
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    ax.imshow(img, extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    grid_lines = [[(x, 0), (x, h)] for x in range(1, w)] + [[(0, y), (w, y)] for y in range(1, h)]
    ax.add_collection(LineCollection(grid_lines, colors="white", linewidths=0.3, alpha=0.35))
    if panel is None:
        ax.set_title(f"input, {h}x{w} token grid", fontsize=10)
        return
    shade = np.zeros((h, w, 4), dtype=np.float32)
    shade[..., 3] = np.where(panel.kept.view(h, w).numpy(), 0.0, 0.72)  # dim pruned tokens
    ax.imshow(shade, extent=(0, w, h, 0), interpolation="nearest")
    if panel.regions is not None and int(panel.regions.max()) > 0:
        segs = [list(zip(xs, ys)) for xs, ys in _region_edges(panel.regions, grid)]
        ax.add_collection(LineCollection(segs, colors="#ffd400", linewidths=1.1, alpha=0.9))
    for idx in panel.kept.nonzero().flatten().tolist():
        y, x = divmod(idx, w)
        ax.add_patch(Rectangle((x + 0.06, y + 0.06), 0.88, 0.88, fill=False, edgecolor="#39ff14", linewidth=0.9))
    title = panel.title
    if panel.regions is not None and int(panel.regions.max()) > 0:
        title += f", {int(panel.regions.max()) + 1} regions"
    ax.set_title(title, fontsize=10)
    lines = (["stand-in attention"] if panel.standin_attention else []) + panel.notes
    if lines:
        ax.text(
            0.02, 0.02, "\n".join(lines), transform=ax.transAxes, ha="left", va="bottom",
            fontsize=7.5, color="#b00000" if panel.standin_attention else "black",
            bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "alpha": 0.85, "edgecolor": "none"},
        )


def compare(
    image: str | Path | torch.Tensor,
    strategies: Sequence[str],
    keep: Keep = 0.1,
    out: str | Path = "compare.png",
    grid: tuple[int, int] = (24, 24),
    size: int = 336,
    params: dict[str, Any] | None = None,
    show_input: bool = True,
) -> Path:
    """Draw one panel per strategy (plus the input) and save a PNG. Returns the path.

    ``params`` are passed to every strategy that accepts them (others ignore them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not strategies:
        raise ContractError("give at least one strategy name")
    img = load_image(image, size) if not isinstance(image, torch.Tensor) else image.float()
    panels: list[Panel | None] = [None] if show_input else []
    for name in strategies:
        accepted = _accepted(name, params or {})
        panels.append(run_strategy(name, img, grid, keep, **accepted))
    rows = math.ceil(len(panels) / 5)
    cols = math.ceil(len(panels) / rows)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.8 * rows + 0.3), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        draw_panel(ax, img, grid, panel)
    label = f"keep {keep}" if isinstance(keep, float) else f"keep {keep} tokens"
    fig.suptitle(f"vtprune show — {label}; dimmed = pruned, green = kept, yellow = regions", fontsize=10)
    path = Path(out)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accepted(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that strategy ``name`` accepts."""
    out = {}
    for key, value in params.items():
        try:
            get_strategy(name, **{key: value})
        except ContractError as err:
            if "has no parameter" in str(err):
                continue
            raise
        out[key] = value
    return out


__all__ = [
    "BUNDLED",
    "Panel",
    "bundled_image_path",
    "compare",
    "draw_panel",
    "load_image",
    "run_strategy",
    "standin_attention",
    "standin_features",
]
