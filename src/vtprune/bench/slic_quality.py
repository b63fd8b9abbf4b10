"""SLIC backends measured: segmentation quality, speed, and ALTP's grounding score.

Three reports (``main(argv)``; ``benchmarks/bench_slic_quality.py`` runs it):

- ``quality``: on the grounding scene generator's instance masks (ground truth: background
  plus each object's visible pixels), boundary recall (tolerance ``TOLERANCE`` px),
  under-segmentation error (Neubert & Protzel's symmetric form) and achievable segmentation
  accuracy of each backend, at the segment counts ALTP asks for (round(0.5 * budget), budgets
  at keep 0.5/0.25/0.1 of the token count). Scored twice: on SLIC's pixel labels (upscaled to
  the scene) and on the token regions ALTP actually uses (majority-mapped onto the grid).
- ``speed``: ms per image of ``token_regions_batch`` per backend at batch 1/4/16, all
  backends timed interleaved in one run (the rule of ``backend="auto"`` comes from this).
- ``grounding``: the grounding benchmark's GCG mIoU of ``altp`` / ``altp_ddc`` with each
  backend, same scenes, same run, with scene-bootstrap standard errors.

Example::

    python benchmarks/bench_slic_quality.py quality --split test --limit 64
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..strategies.altp import segments_for
from ..strategies.superpixels import (
    PATCH_PIXELS,
    fast_slic_available,
    labels_to_grid,
    slic_factor,
    slic_labels,
    token_regions_batch,
)

TOLERANCE = 2  # boundary recall: a ground-truth boundary pixel counts if a superpixel edge is this close
KEEPS = (0.5, 0.25, 0.1)


def available_backends() -> list[str]:
    """The concrete backends installed here, in report order."""
    return ["torch", "skimage"] + (["fast_slic"] if fast_slic_available() else [])


def _edges(labels: np.ndarray) -> np.ndarray:
    """Boundary pixels of a label map [H, W]: differs from the right or lower neighbour."""
    e = np.zeros(labels.shape, dtype=bool)
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    e[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return e


def segmentation_scores(sp: np.ndarray, gt: np.ndarray, tolerance: int = TOLERANCE) -> dict[str, float]:
    """Boundary recall, under-segmentation error and achievable segmentation accuracy of the
    superpixels ``sp`` [H, W] against the ground-truth segments ``gt`` [H, W] (both int >= 0).

    BR = share of ground-truth boundary pixels within ``tolerance`` px (square window) of a
    superpixel boundary (1 when there is no ground-truth boundary); UE = (1/N) sum over
    ground-truth segments g and superpixels s meeting g of min(|s & g|, |s - g|); ASA = (1/N)
    sum over superpixels of their largest overlap with one ground-truth segment. Also
    ``components`` (4-connected pieces of all superpixels; = ``segments`` when each is
    connected) and ``edge_share`` (share of pixels on a superpixel boundary): boundary recall
    rewards ragged, fragmented boundaries, these two show how much of it is that.
    """
    if sp.shape != gt.shape:
        raise ValueError(f"superpixels {sp.shape} and ground truth {gt.shape} must have the same shape")
    _, s = np.unique(sp, return_inverse=True)
    _, g = np.unique(gt, return_inverse=True)
    s, g = s.reshape(-1), g.reshape(-1)
    ns, ng = int(s.max()) + 1, int(g.max()) + 1
    table = np.bincount(s * ng + g, minlength=ns * ng).reshape(ns, ng)  # [S, G] overlaps
    total = float(s.size)
    sizes = table.sum(1, keepdims=True)  # [S, 1]
    ue = float(np.minimum(table, sizes - table)[table > 0].sum()) / total
    asa = float(table.max(1).sum()) / total
    gt_edges = _edges(gt)
    near = ndimage.binary_dilation(_edges(sp), np.ones((2 * tolerance + 1,) * 2, dtype=bool))
    br = float((gt_edges & near).sum() / gt_edges.sum()) if gt_edges.any() else 1.0
    sp_edges = _edges(sp)
    parts = sum(int(ndimage.label(sp == v)[1]) for v in np.unique(sp))  # 4-connected pieces
    return {"br": br, "ue": ue, "asa": asa, "segments": float(ns), "components": float(parts),
            "edge_share": float(sp_edges.mean())}


def ground_truth(masks: np.ndarray) -> np.ndarray:
    """Instance masks [n, H, W] (visible pixels) -> segment ids [H, W]: 0 background, i + 1 object i."""
    gt = np.zeros(masks.shape[1:], dtype=np.int64)
    for i, m in enumerate(masks):
        gt[m] = i + 1
    return gt


def _upscale(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest upscale of a label map to ``shape`` (edge rows/columns cropped by a block-mean
    downscale are filled with the last row/column)."""
    ys = np.minimum(np.arange(shape[0]) * labels.shape[0] // shape[0], labels.shape[0] - 1)
    xs = np.minimum(np.arange(shape[1]) * labels.shape[1] // shape[1], labels.shape[1] - 1)
    return labels[ys][:, xs]


def run_quality(split: str = "test", limit: int | None = None, keeps: Sequence[float] = KEEPS,
                backends: Sequence[str] | None = None, patch_pixels: int | None = PATCH_PIXELS) -> dict[str, Any]:
    """Mean BR/UE/ASA per (backend, keep, level) over the scenes of ``split`` (default scene
    geometry of the grounding stand-in). ``level`` is ``pixel`` or ``token``."""
    from ..grounding.evaluate import split_items
    from ..grounding.scenes import SceneConfig

    cfg = SceneConfig()
    items = split_items(split, limit, cfg)
    grid = (cfg.grid, cfg.grid)
    n_tok = cfg.grid * cfg.grid
    names = list(backends) if backends is not None else available_backends()
    factor = slic_factor((cfg.image_size, cfg.image_size), grid, patch_pixels)
    acc: dict[tuple[str, float, str], list[dict[str, float]]] = {}
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    for it in items:
        img = torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)  # [3, H, W]
        gt = ground_truth(it.masks)
        for keep in keeps:
            segs = segments_for(int(round(keep * n_tok)), n_tok, None, 0.5)
            for name in names:
                t0 = time.perf_counter()
                lab = slic_labels(img, segs, 10.0, name, factor)
                seconds[name] += time.perf_counter() - t0
                pix = _upscale(lab, gt.shape)
                tok = labels_to_grid(lab, grid).reshape(grid)
                acc.setdefault((name, keep, "pixel"), []).append(segmentation_scores(pix, gt))
                acc.setdefault((name, keep, "token"), []).append(
                    segmentation_scores(_upscale(tok, gt.shape), gt))
    rows = []
    for (name, keep, level), vals in acc.items():
        row: dict[str, Any] = {"backend": name, "keep": keep, "level": level,
                               "n_segments": segments_for(int(round(keep * n_tok)), n_tok, None, 0.5)}
        for m in ("br", "ue", "asa", "segments", "components", "edge_share"):
            x = np.array([v[m] for v in vals])
            row[m] = float(x.mean())
            row[m + "_se"] = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0
        rows.append(row)
    meta = {"split": split, "scenes": len(items), "image": cfg.image_size, "grid": cfg.grid,
            "factor": factor, "tolerance": TOLERANCE,
            "ms_per_image": {k: 1e3 * v / max(1, len(items) * len(keeps)) for k, v in seconds.items()},
            "machine": _machine()}
    return {"meta": meta, "rows": rows}


def format_quality(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run_quality`."""
    head = ("| level | keep | segments asked | backend | segments got | pieces | edge share "
            "| BR ↑ | UE ↓ | ASA ↑ |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["level"], -r["keep"], r["backend"])):
        lines.append(
            f"| {r['level']} | {r['keep']} | {r['n_segments']} | {r['backend']} | {r['segments']:.1f} "
            f"| {r['components']:.1f} | {r['edge_share']:.3f} "
            f"| {r['br']:.3f} ± {r['br_se']:.3f} | {r['ue']:.3f} ± {r['ue_se']:.3f} "
            f"| {r['asa']:.3f} ± {r['asa_se']:.3f} |")
    m = result["meta"]
    ms = ", ".join(f"{k} {v:.1f}" for k, v in m["ms_per_image"].items())
    lines.append("")
    lines.append(f"{m['scenes']} `{m['split']}` scenes, {m['image']} px, {m['grid']}x{m['grid']} grid, "
                 f"SLIC at 1/{m['factor']} scale; BR tolerance {m['tolerance']} px; ± = standard "
                 f"error over scenes; ms per image (single images): {ms}; {m['machine']}.")
    return "\n".join(lines)


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def run_speed(batches: Sequence[int] = (1, 4, 16), sizes: Sequence[tuple[int, int]] = ((336, 24), (672, 48)),
              repeats: int = 3, keep: float = 0.1, backends: Sequence[str] | None = None) -> dict[str, Any]:
    """Median ms per image of ``token_regions_batch`` per backend, batch size and image size;
    backends interleaved within each repeat (same machine load). Images: smoothed noise."""
    names = list(backends) if backends is not None else available_backends()
    rows = []
    for side, g in sizes:
        n = g * g
        segs = segments_for(int(round(keep * n)), n, None, 0.5)
        gen = torch.Generator().manual_seed(0)
        for bsz in batches:
            imgs = torch.nn.functional.avg_pool2d(torch.rand(bsz, 3, side, side, generator=gen), 9, 1, 4)
            valid = torch.ones(bsz, n, dtype=torch.bool)
            times: dict[str, list[float]] = {k: [] for k in names}
            for _ in range(repeats):
                for name in names:
                    t0 = time.perf_counter()
                    token_regions_batch(imgs, (g, g), [segs] * bsz, valid, 10.0, name)
                    times[name].append((time.perf_counter() - t0) * 1e3 / bsz)
            for name in names:
                rows.append({"image": side, "grid": g, "batch": bsz, "backend": name,
                             "n_segments": segs, "ms_per_image": float(np.median(times[name]))})
    return {"meta": {"repeats": repeats, "keep": keep, "machine": _machine()}, "rows": rows}


def format_speed(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run_speed`: ms per image, one column per backend."""
    names = list(dict.fromkeys(r["backend"] for r in result["rows"]))
    lines = ["| image / grid | batch | " + " | ".join(f"{n} ms/img" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    cells: dict[tuple[int, int, int], dict[str, float]] = {}
    for r in result["rows"]:
        cells.setdefault((r["image"], r["grid"], r["batch"]), {})[r["backend"]] = r["ms_per_image"]
    for (side, g, b), v in cells.items():
        lines.append(f"| {side} / {g}x{g} | {b} | " + " | ".join(f"{v[n]:.1f}" for n in names) + " |")
    m = result["meta"]
    lines.append("")
    lines.append(f"median of {m['repeats']} interleaved runs, keep {m['keep']}; {m['machine']}.")
    return "\n".join(lines)


def run_grounding(strategies: Sequence[str] = ("altp", "altp_ddc"), keeps: Sequence[float] = (0.25, 0.1),
                  backends: Sequence[str] = ("auto", "torch"), split: str = "test",
                  limit: int | None = None, batch_size: int = 16) -> dict[str, Any]:
    """GCG mIoU/AP50/recall (± scene bootstrap SE) of each strategy at each keep with each
    SLIC backend, original positions, on the grounding benchmark's path and scenes."""
    from ..backbones import attach
    from ..grounding.bench import bootstrap, check_keeps, evaluate_gcg
    from ..grounding.evaluate import split_items
    from ..grounding.model import load_pretrained

    check_keeps(keeps)
    model = load_pretrained()
    model.eval()
    items = split_items(split, limit, model.cfg.scene)
    rows = []
    started = time.time()
    for name in strategies:
        for keep in keeps:
            for backend in backends:
                with attach(model.llava, name, keep=keep, positions="original", backend=backend):
                    res = evaluate_gcg(model, items, batch_size)
                rows.append({"strategy": name, "keep": keep, "backend": backend, **bootstrap(res)})
    meta = {"split": split, "scenes": len(items), "seconds": round(time.time() - started, 1),
            "machine": _machine()}
    return {"meta": meta, "rows": rows}


def format_grounding(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run_grounding`."""
    lines = ["| strategy | keep | SLIC backend | mIoU | AP50 | recall |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['strategy']} | {r['keep']} | {r['backend']} | {r['miou']:.3f} ± {r['miou_se']:.3f} "
                     f"| {r['ap50']:.3f} ± {r['ap50_se']:.3f} | {r['recall']:.3f} ± {r['recall_se']:.3f} |")
    m = result["meta"]
    lines.append("")
    lines.append(f"{m['scenes']} `{m['split']}` scenes, original positions; ± = scene-bootstrap "
                 f"standard error; {m['seconds']} s; {m['machine']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``quality`` | ``speed`` | ``grounding``: run one report, print Markdown, write JSON + MD."""
    p = argparse.ArgumentParser(prog="vtprune bench slic-quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", choices=("quality", "speed", "grounding"))
    p.add_argument("--split", default="test", help="scene split (quality, grounding; default test)")
    p.add_argument("--limit", type=int, default=None, help="first N scenes only")
    p.add_argument("--backends", default=None, help="comma-separated SLIC backends (default: all installed; "
                   "grounding: auto,torch)")
    p.add_argument("--patch-pixels", type=int, default=PATCH_PIXELS,
                   help=f"quality: SLIC at ~this many pixels per token patch (default {PATCH_PIXELS}, ALTP's)")
    p.add_argument("--repeats", type=int, default=3, help="speed: interleaved repeats (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="out/bench", help="output directory (default out/bench)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b] if args.backends else None
    if args.report == "quality":
        result = run_quality(args.split, args.limit, backends=backends, patch_pixels=args.patch_pixels)
        table = format_quality(result)
    elif args.report == "speed":
        result = run_speed(repeats=args.repeats, backends=backends)
        table = format_speed(result)
    else:
        result = run_grounding(split=args.split, limit=args.limit, backends=backends or ("auto", "torch"))
        table = format_grounding(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"slic_{args.report}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    return 0


__all__ = ["format_grounding", "format_quality", "format_speed", "ground_truth", "main", "run_grounding",
           "run_quality", "run_speed", "segmentation_scores"]
