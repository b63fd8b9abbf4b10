"""``vtprune bench grounding``: every pruning strategy on the grounding stand-in (GCG metrics).

Pruning runs through the real adapter path: ``vtprune.backbones.attach`` on the stand-in's
stock ``LlavaForConditionalGeneration``, driven by ``generate`` (pruned prefill, KV cache), so
pre-LLM and in-LLM strategies (fastv, pyramiddrop, hybrids) get the image and attention
signals the adapter supplies, exactly as in a deployed GLaMM. As in GLaMM, each ``[SEG]``
token's last hidden state is read from the generation pass itself (the state computed when
the ``[SEG]`` token is fed back) and prompts the mask decoder, which reads its own unpruned
image features. Decoding is greedy and grammar-constrained like ``inference.describe``.

Standard errors: a scene bootstrap (fixed seed) for mIoU, AP50 and recall; for ``random``
the spread over seeds is added (the reported error combines both).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from . import metrics, text
from .evaluate import gcg_results, score_prediction, split_items
from .inference import _grammar_mask, seg_positions
from .model import GroundingModel
from .parallel import is_main, map_batches, world

METRICS = ("miou", "ap50", "recall")
COMPACT_STRATEGIES = ("altp", "fastv", "cdpruner", "dart")
"""Always run with both position modes: the seed method and its in-LLM baseline, plus one
pre-LLM (CDPruner) and one in-LLM (DART) method of 2026."""
BOOTSTRAP = 200
MAX_OBJECTS = 8
# Validity ablations (evaluate.MODES) reported beside the strategies, and what each feeds.
ABLATIONS = {"none": "none (keep 0)", "noise": "144 noise tokens",
             "oracle": "object patches only"}
VALIDITY_LIMIT = 0.30  # keep-0 and noise must fall to at most this share of unpruned mIoU


class _Grammar(LogitsProcessor):
    """``colour shape [SEG]`` repeated, then ``</s>`` (same rule as ``inference.describe``)."""

    def __init__(self, prompt_len: int, max_objects: int = MAX_OBJECTS):
        self.prompt_len = prompt_len
        self.max_objects = max_objects

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        allowed = _grammar_mask(step % 3, step // 3, self.max_objects).to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))  # type: ignore[return-value]


def prompt_ids(model: GroundingModel) -> list[int]:
    """``<s> <image>xN describe and segment :`` as ids (the stock LLaVA input)."""
    image = model.ids[text.IMAGE]
    return model.prefix_ids() + [image] * model.cfg.num_visual_tokens + model.prompt_ids()


@torch.no_grad()
def generate_grounded(model: GroundingModel, images: torch.Tensor,
                      ) -> tuple[list[list[str]], list[torch.Tensor]]:
    """Greedy GCG through the stock LLaVA ``generate`` (whatever is attached to it).

    images [B, 3, S, S] in [0, 1]. Returns per image the generated words (without ``</s>``)
    and the mask probabilities [n_i, S, S] of its ``[SEG]`` tokens.
    """
    b = images.shape[0]
    ids = torch.tensor(prompt_ids(model)).expand(b, -1).contiguous()
    v = text.vocab()
    llava: Any = model.llava  # generate's union return type: this call returns a dict output
    out = llava.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids),
        pixel_values=model.pixel_values(images), max_new_tokens=3 * MAX_OBJECTS + 1,
        do_sample=False, logits_processor=LogitsProcessorList([_Grammar(ids.shape[1])]),
        output_hidden_states=True, return_dict_in_generate=True,
        pad_token_id=v[text.PAD], eos_token_id=v[text.EOS], bos_token_id=v[text.BOS])
    gen = out.sequences[:, ids.shape[1]:]                                # [B, L]
    bi, pi = seg_positions(gen)
    s = images.shape[-1]
    words = []
    for row in gen.tolist():
        w = text.decode(row)
        words.append(w[: w.index(text.EOS)] if text.EOS in w else w)
    if len(bi) == 0:
        return words, [torch.zeros(0, s, s) for _ in range(b)]
    # The state of generated token j is computed at step j + 1, when it is fed back.
    if int(pi.max()) + 1 >= len(out.hidden_states):
        raise RuntimeError("a [SEG] was the last generated token: its state was never computed")
    seg = torch.stack([out.hidden_states[int(p) + 1][-1][int(i), -1] for i, p in zip(bi, pi)])
    fine, _ = model.decoder(images, seg, bi)
    prob = F.interpolate(fine[:, None], size=(s, s), mode="bilinear",
                         align_corners=False)[:, 0].sigmoid()
    return words, [prob[bi == i] for i in range(b)]


@dataclass
class _Cell:
    results: list[metrics.ImageResult]
    kept: float  # mean visual tokens reaching the LLM's first pruned layer (from records)


def evaluate_gcg(model: GroundingModel, items: Sequence[Any], batch_size: int = 16,
                 tick: Callable[[int], None] | None = None) -> list[metrics.ImageResult]:
    """Per-image GCG outcomes of ``generate_grounded`` over scenes at the model's resolution,
    with whatever is attached to ``model.llava`` (e.g. ``with attach(model.llava, ...):``).
    ``tick(n)`` is called after each batch of n scenes. Under ``torchrun`` the batches are
    shared out across ranks and the results gathered (:mod:`.parallel`)."""
    side = model.cfg.scene.image_size
    patch = model.cfg.scene.patch_size

    def run(start: int, chunk: Sequence[Any]) -> list[metrics.ImageResult]:
        images = torch.stack([torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)
                              for it in chunk])
        words, probs = generate_grounded(model, images)
        if tick is not None:
            tick(len(chunk))
        return [score_prediction(it, w, p, side, patch) for it, w, p in zip(chunk, words, probs)]

    return map_batches(items, batch_size, run)  # this rank's batches, gathered in scene order


def model_fingerprint(model: GroundingModel) -> str:
    """Short SHA-256 of the model's weights (names and float32 values): which weights a
    recorded result came from. Names use the flat vision-tower layout of newer transformers
    (older 5.x nest it under ``vision_tower.vision_model.``), so the same weights give the
    same fingerprint on every supported release."""
    h = hashlib.sha256()
    state = {k.replace("vision_tower.vision_model.", "vision_tower.", 1): v for k, v in model.state_dict().items()}
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def bootstrap(results: Sequence[metrics.ImageResult], n: int = BOOTSTRAP,
              seed: int = 0) -> dict[str, float]:
    """Point values and scene-bootstrap standard errors of mIoU, AP50, recall."""
    point = metrics.summarise(results)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(n):
        pick = rng.integers(0, len(results), len(results))
        s = metrics.summarise([results[i] for i in pick])
        for m in METRICS:
            draws[m].append(s[m])
    out = {m: point[m] for m in METRICS}
    out.update({f"{m}_se": float(np.std(draws[m], ddof=1)) for m in METRICS})
    out["n_objects"] = point["n_objects"]
    return out


def _combine_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds; error = sqrt(mean scene variance / seeds + seed variance / seeds)."""
    k = len(per_seed)
    out: dict[str, float] = {}
    for m in METRICS:
        vals = np.array([r[m] for r in per_seed])
        scene_var = float(np.mean([r[f"{m}_se"] ** 2 for r in per_seed]))
        seed_var = float(vals.var(ddof=1)) if k > 1 else 0.0
        out[m] = float(vals.mean())
        out[f"{m}_se"] = math.sqrt(scene_var / k + seed_var / k)
        out[f"{m}_seed_sd"] = math.sqrt(seed_var)
    out["n_objects"] = per_seed[0]["n_objects"]
    return out


def layer_tokens(strategy: str, keep: float, layers: int, n: int) -> list[int]:
    """Visual tokens each decoder layer sees under ``strategy``'s own schedule at ``keep``.

    A pre-LLM point (layer None) applies to every layer; an in-LLM point to its layer and
    those after it. Strategies spend different budgets at one ``keep`` (FastV prunes from
    layer 2, PyramidDrop from its first boundary): the mean over layers is the comparable one.
    """
    from vtprune import get_strategy
    from vtprune.core import keep_count

    sched = get_strategy(strategy).schedule(layers, keep)
    out = []
    for layer in range(layers):
        count = n
        for pt in sched.points:
            if pt.layer is None or pt.layer <= layer:
                count = keep_count(pt.keep, n)
        out.append(count)
    return out


def check_keeps(keeps: Sequence[float]) -> None:
    """Raise ``ValueError`` unless ``keeps`` is a non-empty list of ratios in (0, 1]."""
    if not keeps or any(not 0.0 < k <= 1.0 for k in keeps):
        raise ValueError(f"keep ratios must lie in (0, 1], got {list(keeps)}")


def plan(strategies: Sequence[str], keeps: Sequence[float], seeds: Sequence[int],
         positions: Sequence[str]) -> list[dict[str, Any]]:
    """The cells to run: one per (strategy, keep, position mode, seed)."""
    cells = []
    for name in strategies:
        modes = list(dict.fromkeys(list(positions) + (["original", "compact"]
                                                      if name in COMPACT_STRATEGIES else [])))
        for keep in keeps:
            for pos in modes:
                for seed in (seeds if name == "random" else [None]):
                    cells.append({"strategy": name, "keep": keep, "positions": pos,
                                  "seed": seed})
    return cells


def run_grounding_bench(strategies: Iterable[str] | None = None,
                        keeps: Sequence[float] = (0.5, 0.25, 0.1), split: str = "test",
                        limit: int | None = None, seeds: Sequence[int] = (0, 1, 2),
                        positions: Sequence[str] = ("original",), progress: bool = True,
                        model: GroundingModel | None = None, batch_size: int = 16,
                        small_split: str | None = "test_small", validity: bool = True,
                        ) -> dict[str, Any]:
    """Unpruned once, then every strategy at every keep, on ``split`` and ``small_split``.

    Returns ``{"meta", "unpruned", "validity", "rows", "skipped"}``: ``unpruned[split]`` and
    each row's ``scores[split]`` hold mIoU/AP50/recall with ``*_se``; ``validity[mode]``
    the same for the ablations of ``ABLATIONS`` (empty when ``validity`` is False) with
    ``miou_ratio`` to unpruned and, for none/noise, ``pass`` (ratio <= ``VALIDITY_LIMIT``);
    ``skipped`` lists ``{"strategy", "keep", "positions", "reason"}`` for cells ``attach``
    refused (e.g. a schedule that does not fit the model's depth).
    """
    import vtprune
    from vtprune.backbones import attach

    known = vtprune.list_strategies()
    names = list(known) if strategies is None else list(strategies)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; registered: {known}")
    check_keeps(keeps)
    bad_pos = [p for p in positions if p not in ("original", "compact")]
    if bad_pos:
        raise ValueError(f"positions must be 'original' or 'compact', got {bad_pos}")
    if not seeds:
        raise ValueError("need at least one seed for random")
    if model is None:
        from .model import load_pretrained
        model = load_pretrained()
    model.eval()
    splits = [split] + ([small_split] if small_split and small_split != split else [])
    items = {s: split_items(s, limit, model.cfg.scene) for s in splits}
    cells = plan(names, keeps, seeds, positions)
    runs = 1 + len(cells) + (len(ABLATIONS) if validity else 0)
    total = len(items_all := [it for s in splits for it in items[s]]) * runs
    from tqdm import tqdm
    bar = tqdm(total=total, disable=not progress or not is_main(), unit="scene", desc="grounding bench")
    del items_all
    started = time.time()

    def run_cell() -> dict[str, list[metrics.ImageResult]]:
        return {s: evaluate_gcg(model, items[s], batch_size, bar.update) for s in splits}

    unpruned_res = run_cell()
    unpruned = {s: bootstrap(r) for s, r in unpruned_res.items()}
    checks: dict[str, dict[str, Any]] = {}
    for mode in ABLATIONS if validity else ():
        bar.set_postfix_str(f"validity: {mode}")
        scores = {}
        for s in splits:
            scores[s] = bootstrap(gcg_results(model, items[s], mode, batch_size))
            scores[s]["miou_ratio"] = scores[s]["miou"] / max(unpruned[s]["miou"], 1e-9)
            if mode != "oracle":
                scores[s]["pass"] = scores[s]["miou_ratio"] <= VALIDITY_LIMIT
            bar.update(len(items[s]))
        checks[mode] = scores
    raw: dict[tuple[str, float, str], list[dict[str, dict[str, float]]]] = {}
    kept_counts: dict[tuple[str, float, str], list[float]] = {}
    skipped: list[dict[str, Any]] = []
    for cell in cells:
        key = (cell["strategy"], cell["keep"], cell["positions"])
        if any(s["strategy"] == key[0] and s["keep"] == key[1] and s["positions"] == key[2]
               for s in skipped):
            bar.update(sum(len(v) for v in items.values()))
            continue
        params = {"seed": cell["seed"]} if cell["seed"] is not None else {}
        bar.set_postfix_str(f"{key[0]} keep={key[1]} {key[2]}")
        try:
            handle = attach(model.llava, key[0], keep=key[1], positions=key[2], **params)
        except Exception as exc:  # attach validates up front: report, do not crash the sweep
            skipped.append({"strategy": key[0], "keep": key[1], "positions": key[2],
                            "reason": f"{type(exc).__name__}: {exc}"})
            bar.update(sum(len(v) for v in items.values()))
            continue
        with handle:
            res = run_cell()
            counts = [float(r.counts.float().mean()) for r in handle.records[:1]]
        raw.setdefault(key, []).append({s: bootstrap(r) for s, r in res.items()})
        kept_counts.setdefault(key, []).extend(counts)
    bar.close()
    rows = []
    for key, per_seed in raw.items():
        scores = {s: (_combine_seeds([p[s] for p in per_seed]) if key[0] == "random"
                      else per_seed[0][s]) for s in splits}
        kc = kept_counts.get(key) or []
        per_layer = layer_tokens(key[0], key[1], model.cfg.text_layers,
                                 model.cfg.num_visual_tokens)
        rows.append({"strategy": key[0], "keep": key[1], "positions": key[2],
                     "layer_tokens": per_layer, "mean_layer_tokens": float(np.mean(per_layer)),
                     "seeds": len(per_seed) if key[0] == "random" else None,
                     "first_prune_tokens": float(np.mean(kc)) if kc else None,
                     "scores": scores})
    meta = {"split": split, "small_split": small_split, "limit": limit,
            "scenes": {s: len(v) for s, v in items.items()}, "keeps": list(keeps),
            "strategies": names, "seeds": list(seeds), "positions": list(positions),
            "num_visual_tokens": model.cfg.num_visual_tokens,
            "decoder_layers": model.cfg.text_layers, "weights": model_fingerprint(model),
            "bootstrap": BOOTSTRAP, "seconds": round(time.time() - started, 1),
            "processes": world()[1],
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "torch_threads": torch.get_num_threads()}
    return {"meta": meta, "unpruned": unpruned, "validity": checks, "rows": rows,
            "skipped": skipped}


def _fmt(s: dict[str, float], m: str) -> str:
    return f"{s[m]:.3f} ± {s[m + '_se']:.3f}"


def format_markdown(result: dict[str, Any]) -> str:
    """One table: rows = unpruned + (strategy, keep, positions); columns = metrics per split."""
    meta = result["meta"]
    splits = list(result["unpruned"])
    head = ["strategy", "keep", "positions", "tokens/layer", "mean tokens"] + [
        f"{m} {s}" for s in splits for m in ("mIoU", "AP50", "recall")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, keep: str, pos: str, tokens: str, mean: str,
            scores: dict[str, dict[str, float]]) -> None:
        cells = [_fmt(scores[s], m) for s in splits for m in METRICS]
        lines.append("| " + " | ".join([name, keep, pos, tokens, mean] + cells) + " |")

    n = meta["num_visual_tokens"]
    row("unpruned", "1", "-", str(n), str(n), result["unpruned"])
    for mode, label in ABLATIONS.items():
        if mode in result.get("validity", {}):
            row(f"*validity: {label}*", "-", "-", "-", "-", result["validity"][mode])
    for r in sorted(result["rows"], key=lambda r: (-r["keep"], r["strategy"], r["positions"])):
        name = r["strategy"] + (f" ({r['seeds']} seeds)" if r["seeds"] else "")
        tokens = "/".join(str(t) for t in r["layer_tokens"])
        row(name, f"{r['keep']:g}", r["positions"], tokens, f"{r['mean_layer_tokens']:.1f}",
            r["scores"])
    out = "\n".join(lines)
    if result.get("validity"):
        out += "\n\nValidity (GCG mIoU as a share of unpruned; keep 0 and noise must be <= " \
               f"{VALIDITY_LIMIT:.0%}, oracle near 100%): " + "; ".join(
                   f"{ABLATIONS[m]} " + ", ".join(
                       f"{s} {v['miou_ratio']:.2f}"
                       + ("" if "pass" not in v else (" pass" if v["pass"] else " **FAIL**"))
                       for s, v in result["validity"][m].items())
                   for m in ABLATIONS if m in result["validity"])
    if result["skipped"]:
        out += "\n\nSkipped:\n" + "\n".join(
            f"- {s['strategy']} keep {s['keep']:g} ({s['positions']}): {s['reason']}"
            for s in result["skipped"])
    out += (f"\n\n{meta['scenes']} scenes, {meta['num_visual_tokens']} visual tokens, "
            f"± = scene-bootstrap standard error ({meta['bootstrap']} resamples; random: "
            f"combined with the spread over seeds); tokens/layer = visual tokens each decoder "
            f"layer sees, mean tokens = their mean over layers (the comparable budget); "
            f"{meta['seconds']} s.")
    return out


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """mIoU vs keep per strategy (original positions; compact dashed), unpruned as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = result["meta"]["split"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = result["unpruned"][split]
    ax.axhline(base["miou"], color="black", lw=1, ls=":", label="unpruned")
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for r in result["rows"]:
        s = r["scores"][split]
        series.setdefault((r["strategy"], r["positions"]), []).append(
            (r["keep"], s["miou"], s["miou_se"]))
    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    for i, ((name, pos), pts) in enumerate(sorted(series.items())):
        pts.sort()
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, lw=1, color=colours[i % 20],
                    ls="--" if pos == "compact" else "-",
                    label=name + (" (compact)" if pos == "compact" else ""))
    ax.set_xscale("log")
    keeps = sorted({r["keep"] for r in result["rows"]})
    ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
    ax.minorticks_off()
    ax.set_xlabel("keep ratio")
    ax.set_ylabel(f"GCG mIoU ({split})")
    ax.set_title("Grounding stand-in: GCG mIoU vs keep")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """grounding_bench.json, grounding_bench.md and grounding_bench.png under ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "grounding_bench.json", "markdown": d / "grounding_bench.md",
             "plot": d / "grounding_bench.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(result) + "\n")
    plot(result, paths["plot"])
    return paths
