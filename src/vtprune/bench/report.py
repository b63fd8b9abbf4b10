"""Speed-benchmark results as Markdown, JSON and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}x"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _speed(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "–"
    return f"{cell['speedup']:.2f}x ({cell['min']:.2f}–{cell['max']:.2f})"


def format_header(result: dict[str, Any]) -> str:
    """One paragraph: machine, threads, model and run settings."""
    env, model, cfg = result["environment"], result["model"], result["config"]
    llm, vis = model["llm"], model["vision"]
    if model.get("family", "llava") == "llava":
        tower = (f"CLIP {vis['image_size']} px / patch {vis['patch_size']}, hidden {vis['hidden_size']}, "
                 f"{vis['num_hidden_layers']} layers")
    else:
        tower = (f"{model['family']} patch {vis['patch_size']} + {vis['spatial_merge_size']}x"
                 f"{vis['spatial_merge_size']} merger, hidden {vis['hidden_size']}, {vis['depth']} layers")
    return (
        f"Machine: {env['cpu_count']}-core {env['processor']} CPU, GPU: {'yes' if env['gpu'] else 'no'}, "
        f"torch {env['torch']} with {env['torch_threads']} threads, {env['date']}.\n"
        f"Model (random weights): LLM hidden {llm['hidden_size']}, MLP {llm['intermediate_size']} "
        f"(gated), {llm['num_hidden_layers']} layers, {llm['num_attention_heads']} heads / "
        f"{llm['num_key_value_heads']} KV heads, {model['llm_params'] / 1e6:.1f}M parameters; vision "
        f"tower {tower} ({model['vision_params'] / 1e6:.2f}M); "
        f"{model['visual_tokens']} visual tokens; {model['dtype']}, {model['attn_implementation']}.\n"
        f"Runs: {cfg['repeats']} interleaved pruned/unpruned pairs per cell (speed-up = median "
        f"unpruned time / median pruned time; min–max of the pairwise ratios in brackets), "
        f"{cfg['warmup']} warm-up, generate {cfg['new_tokens']} new tokens "
        f"at batch {', '.join(str(b) for b in cfg['batches'])}."
    )


def format_table(result: dict[str, Any]) -> str:
    """The main Markdown table: one row per strategy and keep ratio."""
    batches = sorted(result["config"]["batches"])
    big = max(batches)
    head = ["strategy", "keep", "schedule", "avg vis", "FLOPs", "ideal", "LLM prefill", "eff",
            "LLM excl. prune step", "eff", "end-to-end prefill"]
    for b in batches:
        head += [f"generate b{b}", f"eff b{b}"]
    head += [f"KV b{big}", f"peak RSS b{big}", "prune share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if r.get("error"):
            cells = [r["strategy"], f"{r['keep']:g}", f"not run: {r['error']}"] + [""] * (len(head) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        kv = r.get("kv_bytes") or {}
        rss = r.get("peak_rss") or {}
        cells = [
            r["strategy"], f"{r['keep']:g}", r["schedule"], f"{r['avg_visual']:.0f}",
            _pct(r["flops_prefill_ratio"]), _x(r["ideal_llm_prefill"]), _speed(r["llm_prefill"]),
            _pct(r["efficiency_llm_prefill"]), _speed(r["llm_compute"]),
            _pct(r["efficiency_llm_compute"]), _speed(r["e2e_prefill"]),
        ]
        for b in batches:
            cells += [_speed(r[f"generate_b{b}"]), _pct(r[f"efficiency_generate_b{b}"])]
        cells += [_pct(kv.get("ratio")), _pct(rss.get("ratio")),
                  f"{100 * r['prune_share']['median']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_baseline(result: dict[str, Any]) -> str:
    base = result.get("baseline") or {}
    if not base:
        return ""
    parts = [f"{k.replace('_', ' ')} {v * 1000:.0f} ms" for k, v in base.items()
             if k.endswith("prefill") or k.startswith("generate")]
    if "kv_bytes" in base:
        parts.append(f"KV cache {base['kv_bytes'] / 2**20:.1f} MiB")
    if "peak_rss" in base:
        parts.append(f"peak RSS growth {base['peak_rss'] / 2**20:.0f} MiB")
    return "Unpruned medians: " + ", ".join(parts) + "."


def format_markdown(result: dict[str, Any]) -> str:
    return "\n\n".join(
        s for s in (format_header(result), format_baseline(result), format_table(result), LEGEND) if s
    ) + "\n"


LEGEND = (
    "Columns: *avg vis* = visual tokens averaged over LLM layers; *FLOPs* = LLM prefill FLOPs "
    "pruned / unpruned (exact accounting, `vtprune.measure`); *ideal* = 1 / FLOPs ratio; speed-ups "
    "are unpruned time / pruned time; *LLM prefill* includes the pruning step (the adapter runs "
    "it inside the language model's forward), *LLM excl. prune step* subtracts it; *eff* = measured speed-up / ideal speed-up (for generate, "
    "the ideal includes the decode steps); *KV* = bytes of the returned KV cache, pruned / "
    "unpruned; *peak RSS* = peak resident-memory growth during generate, pruned / unpruned; "
    "*prune share* = the pruning step's seconds (`handle.records`) / pruned end-to-end prefill."
)


def _placement(schedule: str) -> str:
    """"pre:58" -> "pre-LLM"; "L2:58 L4:29" -> "L2 L4" (where a schedule prunes)."""
    points = [p.split(":")[0] for p in schedule.split()]
    return "pre-LLM" if points == ["pre"] else " ".join(points)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Speed-up vs keep ratio per strategy: LLM prefill and generate at the largest batch,
    measured (solid, with the min–max of pairwise ratios) against the ideal of each placement
    (dashed grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    big = max(result["config"]["batches"])
    panels = [("llm_prefill", "ideal_llm_prefill", "LLM prefill (incl. pruning step), batch 1"),
              (f"generate_b{big}", f"ideal_generate_b{big}", f"generate, batch {big}")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    rows = [r for r in result["rows"] if not r.get("error")]
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    colors = plt.get_cmap("tab20")
    markers = "osD^v<>ph*X"
    keeps = sorted({r["keep"] for r in rows})
    for ax, (key, ideal_key, title) in zip(axes, panels):
        ideals: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            ideals.setdefault(_placement(r["schedule"]), []).append((r["keep"], r[ideal_key]))
        for j, (label, pts) in enumerate(sorted(ideals.items())):
            pts = sorted(set(pts))
            ax.plot([k for k, _ in pts], [v for _, v in pts], color="0.35", linestyle=(0, (4, 2 + 2 * j)),
                    linewidth=1.2, label=f"ideal, {label}")
        for i, name in enumerate(names):
            mine = sorted((r for r in rows if r["strategy"] == name), key=lambda r: r["keep"])
            ks = [r["keep"] for r in mine]
            med = [r[key]["speedup"] for r in mine]
            err = [[max(m - r[key]["min"], 0) for m, r in zip(med, mine)],
                   [max(r[key]["max"] - m, 0) for m, r in zip(med, mine)]]
            ax.errorbar(ks, med, yerr=err, color=colors(i % 20), marker=markers[i % len(markers)],
                        capsize=3, linewidth=1.3, markersize=5, label=name)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
        ax.minorticks_off()
        ax.set_xlabel("keep ratio")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speed-up vs unpruned (median; bars: min–max of pairs)")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    env = result["environment"]
    fig.suptitle(f"vtprune speed benchmark — {env['cpu_count']}-core CPU, no GPU, {env['torch_threads']} "
                 f"torch thread(s), random weights, {env['date']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: str | Path, stem: str = "speed") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    plot(result, paths["plot"])
    return paths
