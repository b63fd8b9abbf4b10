"""Run a grounding model (GLaMM, Sa2VA) on GranD-f under pruning strategies and tabulate the metrics.

``run(...)`` grounds every image of a split once unpruned and once per (strategy, keep), writes
GLaMM-format prediction files under ``out/predictions/<setting>/``, scores each folder with
:func:`.grandf.score`, and writes ``out/results.json``, ``out/table.md`` and
``out/keep_plot.png`` (mIoU, AP50, recall against keep per strategy). ``export_scenes``
writes stand-in scenes as a GranD-f-shaped split (images + the two ground-truth files), so the
whole path runs without the data set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import grandf
from .keep_plot import plot_keeps

COLUMNS = ("setting", "visual tokens / layer", "FLOPs", "METEOR", "CIDEr", "AP50", "mIoU",
           "recall", "s / image")


def find_image(images: Path, image_id: str) -> Path:
    """``images/{image_id}.<ext>`` (GLaMM names predictions after the file's stem)."""
    found = sorted(p for p in images.glob(f"{image_id}.*") if p.is_file())
    if not found:
        raise FileNotFoundError(f"no image file {image_id}.* in {images}")
    return found[0]


def _setting_name(strategy: str | None, keep: float | None) -> str:
    return "unpruned" if strategy is None else f"{strategy}_keep{keep:g}"


def _costs(model: Any, strategy: str | None, keep: float | None, visual: int, total: int,
           ) -> tuple[float, float]:
    """(mean visual tokens per decoder layer, prefill FLOPs ratio) of a setting, for a prompt of
    ``total`` tokens of which ``visual`` are image tokens (means over the split's images: Qwen's
    count varies per image). Works for any grounding model with ``vtprune_backbone()``."""
    from ..core.registry import get_strategy
    from ..measure.flops import ModelDims, compare, visual_per_layer

    dims = ModelDims.from_config(model.vtprune_backbone().config)
    if strategy is None or keep is None:
        return float(visual), 1.0
    schedule = get_strategy(strategy).schedule(dims.layers, keep)
    per_layer = visual_per_layer(schedule, visual, dims.layers)
    return float(np.mean(per_layer)), compare(dims, schedule, visual, total).prefill_ratio


def _prompt_counts(model: Any, result: Any) -> tuple[int, int]:
    """(image tokens, prompt tokens) the model saw for one grounded image."""
    prompt = result.sequence[: result.prompt_length]
    return int((prompt == model.image_id).sum()), int(result.prompt_length)


def run(model_dir: str | Path, images: str | Path, annotations: str | Path, out: str | Path,
        strategies: Sequence[str], keeps: Sequence[float], split: str = "val",
        bert: str | Path | None = None, limit: int | None = None, batch_size: int = 1,
        max_new_tokens: int = 512, dtype: Any = None, device: Any = None,
        progress: bool = True, captions: bool = True) -> list[dict[str, Any]]:
    """Evaluate (module docstring); returns one row per setting, unpruned first.
    ``captions=False`` skips METEOR / CIDEr (they start Java twice per setting)."""
    from PIL import Image
    from tqdm import tqdm

    from ..backbones.handle import attach
    from . import load

    model = load(model_dir, **({"dtype": dtype} if dtype is not None else {}),
                 **({"device": device} if device is not None else {}))
    gt = grandf.GroundTruth.find(annotations, split)
    ids = gt.image_ids()[:limit] if limit is not None else gt.image_ids()
    similarity = grandf.bert_similarity(bert) if bert is not None else None
    settings: list[tuple[str | None, float | None]] = [(None, None)]
    settings += [(s, k) for s in strategies for k in keeps]
    rows = []
    out = Path(out)
    for strategy, keep in settings:
        name = _setting_name(strategy, keep)
        pred_dir = out / "predictions" / name
        handle = attach(model, strategy, keep=keep) if strategy is not None and keep is not None else None
        seconds = 0.0
        counts: list[tuple[int, int]] = []
        try:
            for start in tqdm(range(0, len(ids), batch_size), desc=name, disable=not progress):
                chunk = ids[start: start + batch_size]
                arrays = [np.asarray(Image.open(find_image(Path(images), i)).convert("RGB"))
                          for i in chunk]
                t0 = time.perf_counter()
                results = model.ground(arrays, max_new_tokens=max_new_tokens)
                seconds += time.perf_counter() - t0
                for i, r in zip(chunk, results):
                    counts.append(_prompt_counts(model, r))
                    grandf.write_prediction(pred_dir, i, r.caption, r.phrases, r.masks.numpy())
        finally:
            if handle is not None:
                handle.detach()
        visual, total = (round(float(np.mean(c))) for c in zip(*counts))
        tokens, flops = _costs(model, strategy, keep, visual, total)
        metrics = grandf.score(pred_dir, annotations, split, similarity, image_ids=ids,
                               captions=captions)
        rows.append({"setting": name, "strategy": strategy or "unpruned", "keep": keep,
                     "visual_tokens_per_layer": tokens, "flops_ratio": flops,
                     "seconds_per_image": seconds / len(ids), **metrics})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "table.md").write_text(table(rows) + "\n")
    plot_keeps(rows, ("miou", "ap50", "recall"), out / "keep_plot.png", title=f"GranD-f {split}")
    return rows


def _cell(value: Any, fmt: str) -> str:
    return "unavailable" if value is None else format(value, fmt)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run`'s rows ("unavailable" where a metric could not run)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["setting"], f"{r['visual_tokens_per_layer']:.1f}", f"{r['flops_ratio']:.0%}",
            _cell(r["meteor"], ".3f"), _cell(r["cider"], ".3f"), _cell(r["ap50"], ".3f"),
            _cell(r["miou"], ".3f"), _cell(r["recall"], ".3f"),
            f"{r['seconds_per_image']:.2f}"]) + " |")
    return "\n".join(lines)


def export_scenes(out: str | Path, split: str = "val", count: int = 4,
                  sizes: Sequence[tuple[int, int]] = ((96, 128), (128, 96))) -> tuple[Path, Path]:
    """Stand-in scenes as a GranD-f split: ``out/images/*.png`` and
    ``out/annotations/{split}_gcg_coco_{mask,caption}_gt.json``; returns (images, annotations).
    Scenes are resized to ``sizes`` in turn (nearest for masks), so images differ in shape."""
    from PIL import Image

    from .scenes import SceneConfig, make_scene

    root = Path(out)
    images, notes = root / "images", root / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    img_entries: list[dict] = []
    mask_anns: list[dict] = []
    cap_anns: list[dict] = []
    for k in range(count):
        scene = make_scene(split, k, SceneConfig())
        h, w = sizes[k % len(sizes)]
        image_id = f"scene_{split}_{k:04d}"
        pixels = (scene.image * 255).round().astype(np.uint8)
        Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR).save(images / f"{image_id}.png")
        img_entries.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for m in scene.masks:
            small = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                (w, h), Image.Resampling.NEAREST)) > 127
            mask_anns.append({"id": len(mask_anns) + 1, "image_id": image_id, "category_id": 1,
                              "segmentation": grandf.rle_encode(small), "iscrowd": 0,
                              "area": int(small.sum()), "bbox": _bbox(small)})
        cap_anns.append({"id": k + 1, "image_id": image_id, "caption": " ".join(scene.phrases),
                         "labels": list(scene.phrases)})
    categories = [{"id": 1, "name": "object"}]
    (notes / f"{split}_gcg_coco_mask_gt.json").write_text(json.dumps(
        {"images": img_entries, "annotations": mask_anns, "categories": categories}))
    (notes / f"{split}_gcg_coco_caption_gt.json").write_text(json.dumps(
        {"images": img_entries, "annotations": cap_anns}))
    return images, notes


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
