"""``vtprune demo`` (default): the shipped trained grounding stand-in, unpruned vs pruned.

A handful of scenes from the generator (``test`` split, fixed) go through the stock LLaVA
``generate`` with the real adapter attached (``vtprune.attach``), via the grounding bench's
own path (:func:`vtprune.grounding.bench.generate_grounded`, scored by
:func:`vtprune.grounding.evaluate.score_prediction`). Per strategy: mean visual tokens per
decoder layer, LLM prefill FLOPs ratio (``vtprune.measure``), measured prefill speed-up
against unpruned (same process, interleaved pairs, median) and GCG mIoU / AP50 on these scenes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics, text
from .bench import check_keeps, generate_grounded, layer_tokens, prompt_ids
from .evaluate import score_prediction, split_items

DEMO_STRATEGIES = ("altp", "fastv", "pyramiddrop", "uniform", "random")
NOTE = ("Synthetic stand-in: a 2.6 MB GLaMM-shaped model trained on generated scenes; a few "
        "scenes only. The full table (every strategy, 3 keeps, standard errors) is in "
        "docs/grounding.md.")


def _images(items: Sequence[Any]) -> torch.Tensor:
    """Scenes as a batch: [B, 3, S, S] in [0, 1]."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)
                        for it in items])


def _prefill_seconds(model: Any, images: torch.Tensor) -> float:
    """Seconds of one prefill forward of the stock LLaVA (whatever is attached)."""
    ids = torch.tensor(prompt_ids(model)).expand(images.shape[0], -1).contiguous()
    t0 = time.perf_counter()
    model.llava(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=model.pixel_values(images), use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t0


def run_grounding_demo(keep: float = 0.1, scenes: int = 6, strategies: Sequence[str] | None = None,
                       out_dir: str | Path = "out/demo", repeats: int = 5, picture_scenes: int = 3,
                       progress: bool = True, print_fn: Callable[[str], None] | None = print,
                       ) -> dict[str, Any]:
    """Run the demo; write ``demo.json``, ``demo.md`` and ``demo.png`` into ``out_dir``.

    Returns ``{"meta", "rows", "files"}``; ``rows[0]`` is the unpruned model. Raises
    ``ValueError`` for a keep outside (0, 1], fewer than 1 scene/repeat or unknown strategies.
    """
    from tqdm import tqdm

    import vtprune
    from vtprune.backbones import attach
    from vtprune.measure import ModelDims, compare

    from .model import load_pretrained

    check_keeps([keep])
    if scenes < 1 or repeats < 1:
        raise ValueError(f"scenes and repeats must be >= 1, got {scenes}, {repeats}")
    names = list(DEMO_STRATEGIES if strategies is None else strategies)
    unknown = sorted(set(names) - set(vtprune.list_strategies()))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; registered: {vtprune.list_strategies()}")
    say = print_fn or (lambda s: None)
    started = time.perf_counter()
    model = load_pretrained().eval()
    items = split_items("test", scenes, model.cfg.scene)
    images = _images(items)                                             # [B, 3, S, S]
    side, patch = model.cfg.scene.image_size, model.cfg.scene.patch_size
    n_vis, layers = model.cfg.num_visual_tokens, model.cfg.text_layers
    dims = ModelDims.from_config(model.llava.config)
    total = len(prompt_ids(model))
    bar = tqdm(total=(1 + len(names)) * (1 + repeats), disable=not progress, desc="vtprune demo")
    rows: list[dict[str, Any]] = []
    views: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        _prefill_seconds(model, images)  # warm-up
        for name in ["unpruned", *names]:
            bar.set_postfix_str(name)
            row: dict[str, Any] = {"strategy": name, "keep": None if name == "unpruned" else keep}
            if name == "unpruned":
                words, probs = generate_grounded(model, images)
                kept = None
                row.update(mean_layer_tokens=float(n_vis), flops_ratio=1.0, prefill_speedup=1.0)
            else:
                sched = vtprune.get_strategy(name).schedule(layers, keep)
                row["mean_layer_tokens"] = float(np.mean(layer_tokens(name, keep, layers, n_vis)))
                row["flops_ratio"] = compare(dims, sched, n_vis, total).prefill_ratio
                with attach(model.llava, name, keep=keep) as handle:
                    words, probs = generate_grounded(model, images)
                    last = handle.records[-1] if handle.records else None
                kept = None if last is None else last.indices.clone()
                ratios = []
                for rep in range(repeats):
                    pair = {}
                    for side_ in ("u", "p") if rep % 2 == 0 else ("p", "u"):
                        if side_ == "u":
                            pair["u"] = _prefill_seconds(model, images)
                        else:
                            with attach(model.llava, name, keep=keep):
                                pair["p"] = _prefill_seconds(model, images)
                    ratios.append(pair["u"] / pair["p"])
                    bar.update(1)
                row["prefill_speedup"] = statistics.median(ratios)
            if name == "unpruned":
                bar.update(repeats)
            results = [score_prediction(it, w, p, side, patch)
                       for it, w, p in zip(items, words, probs)]
            summary = metrics.summarise(results)
            row["miou"], row["ap50"] = float(summary["miou"]), float(summary["ap50"])
            rows.append(row)
            views[name] = {"words": words, "probs": probs, "kept": kept,
                           "iou": [float(r.matched_iou.mean()) for r in results]}
            bar.update(1)
    bar.close()
    meta = {"keep": keep, "scenes": scenes, "split": "test", "repeats": repeats,
            "visual_tokens": n_vis, "decoder_layers": layers,
            "torch_threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - started, 1), "note": NOTE}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "demo.json", "markdown": out / "demo.md", "picture": out / "demo.png"}
    # The picture: the first scenes with 2-4 objects (legible), then any others in order.
    order = sorted(range(len(items)), key=lambda i: not 2 <= len(items[i].phrases) <= 4)
    shown = sorted(order[:picture_scenes])
    draw([items[i] for i in shown], shown, views, model.cfg.scene.grid, keep,
         files["picture"])
    result = {"meta": meta, "rows": rows, "files": {k: str(v) for k, v in files.items()}}
    table = format_markdown(result)
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    files["markdown"].write_text(table + "\n")
    say(table)
    say("")
    for kind, path in files.items():
        say(f"{kind:>9}: {path}")
    return result


def format_markdown(result: dict[str, Any]) -> str:
    """The demo table (unpruned first) and the stand-in note."""
    m = result["meta"]
    head = (f"vtprune demo — shipped grounding stand-in, keep {m['keep']:g}, {m['scenes']} "
            f"test scenes, {m['visual_tokens']} visual tokens, {m['decoder_layers']} decoder "
            f"layers, torch threads {m['torch_threads']}, {m['seconds']:.1f} s.")
    lines = ["| strategy | visual tokens / layer | FLOPs | prefill speed-up | mIoU | AP50 |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['strategy']} | {r['mean_layer_tokens']:.1f} | "
                     f"{100 * r['flops_ratio']:.0f}% | {r['prefill_speedup']:.2f}x | "
                     f"{r['miou']:.3f} | {r['ap50']:.3f} |")
    legend = ("FLOPs: LLM prefill FLOPs pruned / unpruned (`vtprune.measure`). Speed-up: median "
              "of interleaved unpruned / pruned prefill times, end to end, this process.")
    return "\n\n".join([head, "\n".join(lines), legend, m["note"]])


def draw(items: Sequence[Any], which: Sequence[int], views: dict[str, dict[str, Any]],
         grid: int, keep: float, path: Path) -> Path:
    """Rows = scenes (``which``: their indices in the demo); columns = ground truth, unpruned,
    then each strategy: the image with pruned tokens dimmed (after the last prune point), the
    predicted masks filled with their phrases, and the scene's mIoU in the title. The ground
    truth is outlined only, so the objects keep their own colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(views)
    colours = plt.get_cmap("tab10")
    cols = 1 + len(names)
    fig, axes = plt.subplots(len(items), cols, figsize=(2.5 * cols, 2.95 * len(items)),
                             squeeze=False)

    def paint(ax: Any, img: np.ndarray, masks: Sequence[np.ndarray], phrases: Sequence[str],
              title: str, fill: bool = True) -> None:
        out = img.copy()
        for k, m in enumerate(masks if fill else ()):
            rgb = np.asarray(colours(k % 10)[:3], dtype=np.float32)
            out[m] = 0.45 * out[m] + 0.55 * rgb
        ax.imshow(np.clip(out, 0, 1))
        for k, (m, ph) in enumerate(zip(masks, phrases)):
            c = colours(k % 10)
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=[c], linewidths=1.2)
            ax.text(3, 12 + 13 * k, ph, color="white", fontsize=7,
                    bbox={"facecolor": c, "alpha": 0.85, "pad": 1, "lw": 0})
        ax.set_title(title, fontsize=9)
        ax.axis("off")

    for i, (it, scene) in enumerate(zip(items, which)):
        img = np.asarray(it.image, dtype=np.float32)                    # [S, S, 3] in [0, 1]
        s = img.shape[0]
        cell = s // grid
        paint(axes[i, 0], img, [m.astype(bool) for m in it.masks], it.phrases,
              f"scene {scene}: ground truth", fill=False)
        for j, name in enumerate(names, start=1):
            v = views[name]
            shown = img
            kept = ""
            if v["kept"] is not None:
                mask = np.zeros(grid * grid, dtype=bool)
                idx = v["kept"][scene]                           # [k], -1 = padding
                mask[idx[idx >= 0].numpy()] = True
                lit = np.kron(mask.reshape(grid, grid), np.ones((cell, cell)))[:s, :s]
                shown = img * (0.35 + 0.65 * lit[..., None]).astype(np.float32)
                kept = f", {int(mask.sum())}/{grid * grid} tok"
            masks = [(p > 0.5).numpy() for p in v["probs"][scene]]
            phrases = text.phrases_from_words(list(v["words"][scene]))
            paint(axes[i, j], shown, masks, phrases,
                  f"{name}{kept}\nmIoU {v['iou'][scene]:.2f}")
    fig.suptitle(f"vtprune demo, keep {keep:g}: tokens kept after the last prune point "
                 "(dimmed = pruned), and the mask each [SEG] produced with its phrase", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
