"""Wall-clock speed of pruned vs unpruned models, in the same process, as ratios.

For every strategy and keep ratio the unpruned and the pruned model run interleaved (the
order alternates between repeats so a drift in machine load hits both), and each pair gives
one ratio; we report the median ratio and its spread (min..max). Measured per run:

* LLM prefill (forward hooks around the language model; includes the pruning step, which
  the adapter runs inside the language model's forward, also for pre-LLM points), the same
  minus the pruning step ("LLM compute"), and end-to-end prefill (vision tower + projector +
  pruning + LLM, one forward with ``logits_to_keep=1``), batch 1;
* ``generate`` with the KV cache, a fixed number of new tokens, at each benchmark batch size;
* at the largest batch: peak RSS growth (:class:`~vtprune.bench.memory.PeakRSS`) and the
  bytes of the returned KV cache;
* the pruning step's own seconds (``handle.records``) as a share of pruned end-to-end prefill.

The ideal speed-up is the FLOP ratio from :mod:`vtprune.measure` (LLM only); efficiency is
measured speed-up / ideal speed-up. Each cell's speed-up is the ratio of median times (see
:func:`summarize`), with the spread of the pairwise ratios.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..backbones.compat import output_cache
from ..core import get_strategy, list_strategies
from ..measure import ModelDims, compare, describe_schedule
from .images import sample_image
from .memory import PeakRSS

PROMPTS = (
    "Describe this picture in detail, please.",
    "What is in the top left corner of the image?",
    "How many objects are there?",
    "Is there an animal in the picture? Answer yes or no.",
)


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark model and run settings.

    The default is LLaVA-1.5-shaped (CLIP ViT/14 at 336 px: 576 visual tokens; Llama decoder,
    multi-head attention, gated MLP with m/d = 2.67 like 7B's 11008/4096) but scaled down so
    one prefill takes a fraction of a second on 2 CPU cores, with a small vision tower so
    the LLM dominates prefill as it does in a 7B model.

    ``threads`` defaults to 1: on a 2-core machine shared with other work, two torch threads
    wait on each other at every parallel region and timings became ~5-10x slower and far
    noisier than with one (measured here; see docs/benchmarks.md).
    """

    text: Mapping[str, Any] = field(default_factory=lambda: {
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 8,
    })
    vision: Mapping[str, Any] = field(default_factory=lambda: {
        "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2,
    })
    keeps: tuple[float, ...] = (0.5, 0.25, 0.1)
    batches: tuple[int, ...] = (1, 4)
    new_tokens: int = 8
    repeats: int = 5
    warmup: int = 1
    threads: int = 1
    seed: int = 0
    kv_dtype: str = "float32"
    family: str = "llava"
    """``"llava"``, or a Qwen family (``"qwen2_5_vl"``, ``"qwen2_vl"``, ``"qwen3_vl"``,
    ``"qwen3_vl_moe"``): the same LLM and vision sizes in that family's classes (M-RoPE
    decoder, patch-merger vision tower; Qwen3-VL: DeepStack after the first three layers),
    with one image per prompt of a 24 x 24 grid of 576 visual tokens, like LLaVA's (672 px
    for Qwen2-VL, 768 px for Qwen3-VL)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not self.keeps or any(not 0.0 < k <= 1.0 for k in self.keeps):
            raise ValueError(f"keeps must be ratios in (0, 1], got {self.keeps}")
        if not self.batches or any(b < 1 or b > len(PROMPTS) for b in self.batches):
            raise ValueError(f"batches must lie in 1..{len(PROMPTS)}, got {self.batches}")
        if self.repeats < 1 or self.new_tokens < 1 or self.threads < 1 or self.warmup < 0:
            raise ValueError(
                f"need repeats >= 1, new_tokens >= 1, threads >= 1, warmup >= 0; got "
                f"{self.repeats}, {self.new_tokens}, {self.threads}, {self.warmup}"
            )


FAMILIES = ("llava", "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe")
QWEN_GRID = 24
"""Tokens per side of the Qwen benchmark image (576 in all): 672 px for Qwen2-VL's 28 px a
token, 768 px for Qwen3-VL's 32."""
QWEN_IMAGE_SIZE = 672
"""Pixels per side of the Qwen2-VL benchmark image: 672 / 28 = 24 tokens per side."""


def qwen_image_size(model: Any) -> int:
    """Pixels per side of a Qwen model's benchmark image: :data:`QWEN_GRID` tokens, each
    2 x 2 patches of the model's patch size."""
    vis = model.config.vision_config
    return QWEN_GRID * int(vis.spatial_merge_size) * int(vis.patch_size)

FULL = BenchConfig()
LARGE = BenchConfig(
    text={"hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 8,
          "num_attention_heads": 16, "num_key_value_heads": 16},
)
"""FULL's shape at twice the width (~4x the LLM FLOPs, 101M parameters): a prefill takes about
a second here, closer to the regime of a 7B model, where fixed per-operation costs and the
pruning step are small next to the arithmetic."""
SIZES = {"base": FULL, "large": LARGE}
QUICK = BenchConfig(
    text={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 2},
    vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2},
    keeps=(0.25,), batches=(1, 2), new_tokens=2, repeats=1, warmup=1, threads=1,
)
"""A seconds-long run on a tiny model, for tests and smoke checks (numbers mean little)."""


def build_model(config: BenchConfig) -> Any:
    """The benchmark model: random weights, eval mode, SDPA attention."""
    from ..models import build_tiny_llava, build_tiny_qwen

    if config.family == "llava":
        return build_tiny_llava(seed=config.seed, text=dict(config.text), vision=dict(config.vision))
    v = config.vision  # CLIP-style sizes -> the family's vision config
    hidden, width = int(v["hidden_size"]), int(config.text["hidden_size"])
    common = {"depth": int(v["num_hidden_layers"]), "num_heads": int(v["num_attention_heads"])}
    vision: dict[str, Any] = (
        {**common, "embed_dim": hidden, "hidden_size": width, "mlp_ratio": int(v["intermediate_size"]) / hidden}
        if config.family == "qwen2_vl"
        else {**common, "hidden_size": hidden, "intermediate_size": int(v["intermediate_size"]), "out_hidden_size": width}
    )
    if config.family in ("qwen3_vl", "qwen3_vl_moe"):  # DeepStack from the first blocks, as many as there are
        vision["deepstack_visual_indexes"] = list(range(min(3, common["depth"])))
    return build_tiny_qwen(config.family, seed=config.seed, text=dict(config.text), vision=vision)


def make_batches(model: Any, config: BenchConfig) -> dict[int, dict[str, torch.Tensor]]:
    """Inputs per batch size: the bundled sample image, one prompt per sample (left-padded)."""
    from ..models import make_inputs, make_qwen_inputs

    sizes = sorted(set(config.batches) | {1})
    if config.family != "llava":
        image = sample_image(size=qwen_image_size(model))
        return {b: make_qwen_inputs(model, [image] * b, list(PROMPTS[:b])) for b in sizes}
    image = sample_image(size=int(model.config.vision_config.image_size))
    return {b: make_inputs(model, [image] * b, list(PROMPTS[:b]), padding_side="left") for b in sizes}


def visual_tokens(model: Any, batches: Mapping[int, Mapping[str, torch.Tensor]]) -> int:
    """Visual tokens of the one-sample batch (every sample has as many)."""
    return int((batches[1]["input_ids"] == int(model.config.image_token_id)).sum())


class LLMTimer:
    """Seconds spent inside ``model.model.language_model`` during the last forward."""

    def __init__(self, model: Any) -> None:
        lm = model.model.language_model
        self.start = self.end = 0.0
        self._handles = [
            lm.register_forward_pre_hook(self._pre),
            lm.register_forward_hook(self._post),
        ]

    def _pre(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def _post(self, *args: Any) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def cache_bytes(cache: Any) -> int:
    """Bytes held by the keys and values of a transformers cache (any layer layout)."""
    layers = getattr(cache, "layers", None)
    total = 0
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    for item in cache:  # legacy tuple-of-(k, v) layout
        for t in item:
            total += t.numel() * t.element_size()
    return total


def prune_seconds(handle: Any) -> float:
    """Seconds the pruning step took in the last prefill, summed over prune points."""
    total = 0.0
    for rec in getattr(handle, "records", None) or []:
        value = rec.get("seconds") if isinstance(rec, Mapping) else getattr(rec, "seconds", None)
        total += float(value or 0.0)
    return total


def measure_once(
    model: Any, batches: Mapping[int, Mapping[str, torch.Tensor]], new_tokens: int, handle: Any = None
) -> dict[str, float]:
    """One run of every measurement (see the module docstring); seconds and bytes."""
    out: dict[str, float] = {}
    timer = LLMTimer(model)
    try:
        t0 = time.perf_counter()
        model(**batches[1], logits_to_keep=1, use_cache=False)
        out["e2e_prefill"] = time.perf_counter() - t0
        out["llm_prefill"] = timer.seconds
    finally:
        timer.remove()
    out["prune_s"] = prune_seconds(handle) if handle is not None else 0.0
    # the adapter prunes inside the language model's forward (pre-LLM points too), so the
    # LLM time includes the pruning step; "llm_compute" is the LLM time without it
    out["llm_compute"] = out["llm_prefill"] - out["prune_s"]
    largest = max(batches)
    for b, inputs in sorted(batches.items()):
        kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                  "return_dict_in_generate": True, "pad_token_id": 0}
        if b == largest:
            with PeakRSS() as peak:
                t0 = time.perf_counter()
                res = model.generate(**inputs, **kwargs)
                out[f"generate_b{b}"] = time.perf_counter() - t0
            if peak.delta is not None:
                out["peak_rss"] = float(peak.delta)
            out["kv_bytes"] = float(cache_bytes(output_cache(res)))
        else:
            t0 = time.perf_counter()
            model.generate(**inputs, **kwargs)
            out[f"generate_b{b}"] = time.perf_counter() - t0
    return out


def summarize(unpruned: Sequence[float], pruned: Sequence[float]) -> dict[str, float]:
    """Speed-up of one cell from interleaved runs (seconds).

    ``speedup`` = median(unpruned) / median(pruned) — robust when single runs are hit by
    machine load; ``min`` / ``max`` = the spread of the pairwise ratios u_i / p_i;
    ``paired_median`` = their median; ``best`` = min(unpruned) / min(pruned) (best-of-n, the
    least load-sensitive figure)."""
    ratios = [u / p for u, p in zip(unpruned, pruned) if p > 0]
    return {
        "speedup": statistics.median(unpruned) / statistics.median(pruned),
        "paired_median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
        "best": min(unpruned) / min(pruned),
        "unpruned_s": statistics.median(unpruned), "pruned_s": statistics.median(pruned),
        "n": len(ratios),
    }


def environment(threads: int) -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "requested_threads": threads, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "gpu": torch.cuda.is_available(),
    }


def describe_model(model: Any, config: BenchConfig) -> dict[str, Any]:
    text, vis = model.config.text_config, model.config.vision_config
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    qwen = config.family != "llava"
    vision_keys = ("patch_size", "spatial_merge_size", "hidden_size", "depth") if qwen else (
        "image_size", "patch_size", "hidden_size", "num_hidden_layers")
    tower = model.model.visual if qwen else model.model.vision_tower
    return {
        "family": config.family,
        "llm": {k: getattr(text, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "vision": {k: getattr(vis, k) for k in vision_keys},
        "visual_tokens": QWEN_GRID**2 if qwen else int(model.config.image_seq_length),
        "llm_params": count(model.model.language_model), "vision_params": count(tower),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": getattr(text, "_attn_implementation", None),
    }


def run_speed(
    config: BenchConfig = FULL,
    strategies: Iterable[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every strategy (default: all registered) at ``config.keeps``.

    Per strategy and repeat, one unpruned run and one pruned run per keep ratio form a block
    (``U, P(k1), P(k2), ...``, reversed on odd repeats); each pruned run is paired with the
    block's unpruned run. Returns a JSON-ready dict: ``config``, ``environment``, ``model``,
    ``baseline`` (unpruned medians) and ``rows`` (one per strategy and keep; ``error`` set,
    with the reason, when a strategy could not run on this model)."""
    from tqdm.auto import tqdm

    from ..backbones import attach

    names = list(strategies) if strategies is not None else list_strategies()
    unknown = sorted(set(names) - set(list_strategies()))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; registered: {list_strategies()}")
    torch.set_num_threads(config.threads)
    model = build_model(config)
    batches = make_batches(model, config)
    say = log or (lambda s: None)
    say(f"benchmark model: {describe_model(model, config)}; torch threads {torch.get_num_threads()}")

    baseline: list[dict[str, float]] = []
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(names) * len(config.keeps) * config.repeats, disable=not progress,
               desc="bench speed", unit="run")
    with torch.inference_mode():
        for _ in range(config.warmup):
            measure_once(model, batches, config.new_tokens)
        for name in names:
            bar.set_postfix_str(name)
            rows.extend(_bench_strategy(model, attach, name, config, batches, baseline, bar))
    bar.close()
    base = {k: statistics.median(r[k] for r in baseline if k in r) for k in baseline[0]} if baseline else {}
    return {
        "config": asdict(config), "environment": environment(config.threads),
        "model": describe_model(model, config), "baseline": base, "rows": rows,
    }


def _accounting_row(
    name: str, keep: float, config: BenchConfig, batches: Mapping[int, Mapping[str, torch.Tensor]],
    dims: ModelDims, n_vis: int,
) -> dict[str, Any]:
    """The row's schedule and ideal figures (no model run); raises if the placement does not fit."""
    schedule = get_strategy(name).schedule(dims.layers, keep)
    prefill = compare(dims, schedule, n_vis, int(batches[1]["input_ids"].shape[1]))
    row: dict[str, Any] = {
        "strategy": name, "keep": keep, "error": None,
        "schedule": describe_schedule(schedule, n_vis), "avg_visual": prefill.pruned.avg_visual,
        "flops_prefill_ratio": prefill.prefill_ratio, "ideal_llm_prefill": prefill.ideal_prefill_speedup,
    }
    largest = max(batches)
    for b, inputs in batches.items():
        gen = compare(dims, schedule, n_vis, int(inputs["input_ids"].shape[1]),
                      new_tokens=config.new_tokens, batch=b, dtype=config.kv_dtype)
        row[f"ideal_generate_b{b}"] = gen.ideal_generate_speedup
        if b == largest:
            row["kv_ratio_accounted"] = gen.pruned.kv_bytes_final / gen.unpruned.kv_bytes_final
            row["kv_bytes_accounted"] = gen.pruned.kv_bytes_final
            row["kv_bytes_accounted_unpruned"] = gen.unpruned.kv_bytes_final
    return row


def _bench_strategy(
    model: Any, attach: Any, name: str, config: BenchConfig,
    batches: Mapping[int, Mapping[str, torch.Tensor]], baseline: list[dict[str, float]], bar: Any,
) -> list[dict[str, Any]]:
    dims = ModelDims.from_config(model.config)
    n_vis = visual_tokens(model, batches)
    rows: dict[float, dict[str, Any]] = {}
    for keep in config.keeps:
        try:
            rows[keep] = _accounting_row(name, keep, config, batches, dims, n_vis)
            with attach(model, name, keep=keep):  # warm-up of the pruned path
                model(**batches[1], logits_to_keep=1, use_cache=False)
        except Exception as err:  # a strategy that cannot run on this model: say why
            rows[keep] = {"strategy": name, "keep": keep, "error": f"{type(err).__name__}: {err}"}
            bar.update(config.repeats)
    keeps = [k for k in config.keeps if not rows[k]["error"]]
    unpruned: list[dict[str, float]] = []
    pruned: dict[float, list[dict[str, float]]] = {k: [] for k in keeps}
    for rep in range(config.repeats):
        block: list[float | None] = [None, *keeps]
        for item in block if rep % 2 == 0 else block[::-1]:
            if item is None:
                unpruned.append(measure_once(model, batches, config.new_tokens))
                continue
            try:
                with attach(model, name, keep=item) as handle:
                    pruned[item].append(measure_once(model, batches, config.new_tokens, handle))
            except Exception as err:
                rows[item]["error"] = f"{type(err).__name__}: {err}"
            bar.update(1)
    baseline.extend(unpruned)
    for keep in keeps:
        if not rows[keep]["error"]:
            _finish_row(rows[keep], unpruned, pruned[keep], batches)
    return [rows[k] for k in config.keeps]


def _finish_row(
    row: dict[str, Any], unpruned: list[dict[str, float]], pruned: list[dict[str, float]],
    batches: Mapping[int, Mapping[str, torch.Tensor]],
) -> None:
    """Measured speed-ups, efficiencies, KV bytes, memory and prune share into ``row``."""
    for key in ["llm_prefill", "llm_compute", "e2e_prefill", *(f"generate_b{b}" for b in sorted(batches))]:
        row[key] = summarize([u[key] for u in unpruned], [p[key] for p in pruned])
    vision_s = statistics.median(u["e2e_prefill"] - u["llm_prefill"] for u in unpruned)
    llm_s = statistics.median(u["llm_prefill"] for u in unpruned)
    row["ideal_e2e_prefill"] = (vision_s + llm_s) / (vision_s + llm_s * row["flops_prefill_ratio"])
    row["efficiency_llm_prefill"] = row["llm_prefill"]["speedup"] / row["ideal_llm_prefill"]
    row["efficiency_llm_compute"] = row["llm_compute"]["speedup"] / row["ideal_llm_prefill"]
    row["efficiency_e2e_prefill"] = row["e2e_prefill"]["speedup"] / row["ideal_e2e_prefill"]
    for b in sorted(batches):
        row[f"efficiency_generate_b{b}"] = row[f"generate_b{b}"]["speedup"] / row[f"ideal_generate_b{b}"]
    shares = [p["prune_s"] / p["e2e_prefill"] for p in pruned]
    row["prune_share"] = {"median": statistics.median(shares), "max": max(shares),
                          "seconds": statistics.median(p["prune_s"] for p in pruned)}
    kv_u = statistics.median(u["kv_bytes"] for u in unpruned)
    kv_p = statistics.median(p["kv_bytes"] for p in pruned)
    row["kv_bytes"] = {"pruned": kv_p, "unpruned": kv_u, "ratio": kv_p / kv_u if kv_u else None}
    if all("peak_rss" in r for r in unpruned + pruned):
        mu = statistics.median(u["peak_rss"] for u in unpruned)
        mp = statistics.median(p["peak_rss"] for p in pruned)
        row["peak_rss"] = {"pruned": mp, "unpruned": mu, "ratio": mp / mu if mu > 0 else None}


def with_overrides(
    config: BenchConfig, keeps: Sequence[float] | None = None, repeats: int | None = None,
    threads: int | None = None, new_tokens: int | None = None, family: str | None = None,
) -> BenchConfig:
    """``config`` with the given fields replaced (None leaves a field as it is)."""
    changes: dict[str, Any] = {}
    if family is not None:
        changes["family"] = family
    if keeps is not None:
        changes["keeps"] = tuple(float(k) for k in keeps)
    if repeats is not None:
        changes["repeats"] = int(repeats)
    if threads is not None:
        changes["threads"] = int(threads)
    if new_tokens is not None:
        changes["new_tokens"] = int(new_tokens)
    return replace(config, **changes)
