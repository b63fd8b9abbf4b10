"""``vtprune demo``: every registered strategy on a tiny local LLaVA, side by side.

Builds a LLaVA-1.5-shaped model with random weights (:mod:`vtprune.models`; nothing is
downloaded), feeds it a bundled image with two prompts (batch 2, left-padded), and for the
unpruned model and every registered strategy at one keep ratio runs greedy ``generate`` with
the KV cache. The table reports, per strategy: visual tokens kept at each prune point (per
sample), the LLM prefill FLOPs ratio (exact accounting), the measured prefill speed-up
(interleaved with the unpruned model) and the fraction of generated tokens identical to the
unpruned run. Random weights say nothing about answer quality: agreement only shows how much
pruning moves this random model's greedy choices.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

DEMO_PROMPTS = ("What is in this picture?", "Describe the colours and shapes you see.")

DISCLAIMER = (
    "Random weights: the model is untrained, so these runs say nothing about answer quality. "
    "Agreement only measures how much pruning changes this random model's greedy tokens; "
    "FLOPs and speed-ups are real for its shape (tiny, so timings are noisy and overhead-bound; "
    "see `vtprune bench speed` for a larger model)."
)


def run_demo(
    keep: float = 0.25,
    out_dir: str | Path = "out/demo",
    image: str | None = None,
    strategies: Sequence[str] | None = None,
    new_tokens: int = 8,
    repeats: int = 5,
    seed: int = 0,
    threads: int = 1,
    print_fn: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the demo; write ``demo.md``, ``demo.json`` and ``compare.png`` into ``out_dir``.

    ``threads`` torch threads are used during the run (1 by default: on a small shared CPU
    two threads made timings slower and far noisier) and restored afterwards.

    Returns the JSON-ready result (``rows``: one per strategy, the unpruned model first;
    ``files``: where the outputs went). A strategy that cannot run on this model gets a row
    with ``error`` set instead of stopping the demo.
    """
    from .backbones import attach
    from .bench.images import sample_image
    from .core import get_strategy, list_strategies
    from .measure import ModelDims, compare, describe_schedule
    from .models import build_tiny_llava, make_inputs

    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a ratio in (0, 1], got {keep}")
    if new_tokens < 1 or repeats < 1 or threads < 1:
        raise ValueError(
            f"new_tokens, repeats and threads must be >= 1, got {new_tokens}, {repeats}, {threads}"
        )
    names = list(strategies) if strategies is not None else list_strategies()
    unknown = sorted(set(names) - set(list_strategies()))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; registered: {list_strategies()}")
    say = print_fn or (lambda s: None)
    started = time.perf_counter()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_tiny_llava(seed=seed)
        pixels = sample_image(image, size=int(model.config.vision_config.image_size))
        inputs = make_inputs(model, [pixels, pixels], list(DEMO_PROMPTS), padding_side="left")
        dims = ModelDims.from_config(model.config)
        n_vis, total = int(model.config.image_seq_length), int(inputs["input_ids"].shape[1])
        gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
               "pad_token_id": 0}
        with torch.inference_mode():
            _prefill(model, inputs)  # warm-up
            base = model.generate(**inputs, **gen)[:, total:]
            rows: list[dict[str, Any]] = [{
                "strategy": "unpruned", "schedule": "-", "kept": f"{n_vis} of {n_vis}",
                "avg_visual": float(n_vis), "flops_ratio": 1.0, "prefill_speedup": None, "llm_speedup": None,
                "agreement": 1.0, "error": None,
            }]
            panels: list[tuple[str, torch.Tensor]] = []
            for name in names:
                row: dict[str, Any] = {"strategy": name, "error": None}
                try:
                    schedule = get_strategy(name).schedule(dims.layers, keep)
                    cost = compare(dims, schedule, n_vis, total)
                    row.update(schedule=describe_schedule(schedule, n_vis),
                               avg_visual=cost.pruned.avg_visual, flops_ratio=cost.prefill_ratio)
                    with attach(model, name, keep=keep) as handle:
                        out = model.generate(**inputs, **gen)[:, total:]
                        records = list(handle.records)
                    row["kept"] = "; ".join(
                        f"{'pre' if r.layer is None else f'L{r.layer}'}: "
                        f"{'/'.join(str(c) for c in r.counts.tolist())} of {r.original_count}"
                        for r in records
                    )
                    row["agreement"] = float((out == base).float().mean())
                    row["prune_seconds"] = sum(r.seconds for r in records)
                    row["prefill_speedup"], row["llm_speedup"] = _speedup(
                        model, inputs, attach, name, keep, repeats)
                    if records:
                        last = records[-1]
                        where = "pre-LLM" if last.layer is None else f"after L{last.layer}"
                        panels.append((f"{name} ({where})", last.indices[0].clone()))
                except Exception as err:  # report, keep going with the others
                    row["error"] = f"{type(err).__name__}: {err}"
                rows.append(row)
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(saved_threads)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "demo.md", "json": out / "demo.json", "picture": out / "compare.png"}
    grid = (int(round(math.sqrt(n_vis))),) * 2
    picture_note = _picture(pixels, grid, keep, panels, files["picture"])
    result = {
        "keep": keep, "prompts": list(DEMO_PROMPTS), "new_tokens": new_tokens, "repeats": repeats,
        "model": {"llm_hidden": dims.hidden, "llm_layers": dims.layers, "heads": dims.heads,
                  "kv_heads": dims.kv_heads, "visual_tokens": n_vis, "prompt_tokens": total},
        "torch_threads": threads, "seconds": elapsed,
        "rows": rows, "picture": picture_note, "disclaimer": DISCLAIMER,
        "files": {k: str(v) for k, v in files.items()},
    }
    text = format_demo(result)
    files["markdown"].write_text(text + "\n")
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    say(text)
    say("")
    for kind, path in files.items():
        say(f"{kind:>9}: {path}")
    return result


def _prefill(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(end-to-end seconds, LLM seconds) of one prefill forward."""
    from .bench.speed import LLMTimer

    timer = LLMTimer(model)
    try:
        t0 = time.perf_counter()
        model(**inputs, logits_to_keep=1, use_cache=False)
        return time.perf_counter() - t0, timer.seconds
    finally:
        timer.remove()


def _speedup(model: Any, inputs: dict[str, torch.Tensor], attach: Any, name: str, keep: float,
             repeats: int) -> tuple[float, float]:
    """Medians of unpruned / pruned prefill seconds over ``repeats`` interleaved pairs
    (order alternating): (end to end, LLM only)."""
    e2e, llm = [], []
    for rep in range(repeats):
        for side in ("u", "p") if rep % 2 == 0 else ("p", "u"):
            if side == "u":
                unpruned = _prefill(model, inputs)
            else:
                with attach(model, name, keep=keep):
                    pruned = _prefill(model, inputs)
        e2e.append(unpruned[0] / pruned[0])
        llm.append(unpruned[1] / pruned[1])
    return statistics.median(e2e), statistics.median(llm)


def _picture(pixels: torch.Tensor, grid: tuple[int, int], keep: float,
             panels: list[tuple[str, torch.Tensor]], path: Path) -> str:
    """The kept-token comparison picture: one :func:`vtprune.viz.draw_panel` per strategy,
    showing what the model run actually kept (sample 0, after the last prune point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import Panel, draw_panel

    image = pixels.float() / 255.0
    n = grid[0] * grid[1]
    items: list[Panel | None] = [None]
    for title, indices in panels:
        kept = torch.zeros(n, dtype=torch.bool)
        kept[indices[indices >= 0].cpu()] = True
        items.append(Panel(title=f"{title}  {int(kept.sum())}/{n}", kept=kept))
    cols = min(len(items), 4)
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        draw_panel(ax, image, grid, item)
    fig.suptitle(f"vtprune demo — keep {keep:g}: tokens the tiny random-weight LLaVA kept (sample 0, "
                 "after the last prune point); dimmed = pruned", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def format_demo(result: dict[str, Any]) -> str:
    """The demo's Markdown: header, table, disclaimer."""
    m = result["model"]
    head = (
        f"vtprune demo — keep {result['keep']:g}, tiny LLaVA (LLM hidden {m['llm_hidden']}, "
        f"{m['llm_layers']} layers, {m['heads']} heads / {m['kv_heads']} KV heads), "
        f"{m['visual_tokens']} visual tokens among {m['prompt_tokens']} prompt tokens, batch "
        f"{len(result['prompts'])}, {result['new_tokens']} new tokens (greedy, KV cache), "
        f"torch threads: {result['torch_threads']}, {result['seconds']:.1f} s."
    )
    cols = ["strategy", "schedule", "kept visual tokens (per sample)", "avg vis",
            "FLOPs", "LLM prefill speed-up (ideal)", "end-to-end prefill", "agreement"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        if r.get("error"):
            lines.append(f"| {r['strategy']} | {r.get('schedule', '')} | not run: {r['error']} | | | | | |")
            continue
        e2e = "–" if r["prefill_speedup"] is None else f"{r['prefill_speedup']:.2f}x"
        llm = "–" if r["llm_speedup"] is None else f"{r['llm_speedup']:.2f}x"
        lines.append(
            f"| {r['strategy']} | {r['schedule']} | {r['kept']} | {r['avg_visual']:.0f} | "
            f"{100 * r['flops_ratio']:.0f}% | {llm} ({1 / r['flops_ratio']:.2f}x) | {e2e} | "
            f"{100 * r['agreement']:.0f}% |"
        )
    legend = (
        "FLOPs: LLM prefill FLOPs pruned / unpruned (exact accounting, `vtprune.measure`). "
        "Speed-ups: median of interleaved unpruned / pruned prefill times (batch 2), inside the "
        "LLM (ideal = 1 / FLOPs in brackets) and end to end (vision tower included, which "
        "LLM-side pruning does not touch). Agreement: fraction of generated tokens identical to "
        "the unpruned run."
    )
    return "\n\n".join([head, "\n".join(lines), legend, result["disclaimer"]])
