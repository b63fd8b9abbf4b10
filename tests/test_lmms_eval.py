"""The lmms-eval model plugin (``--model vtprune``), end to end through the real CLI.

Runs only where lmms-eval is installed (``make test-lmms``: its own venv, constraints-lmms.txt);
the default venv skips the whole module. Nothing is downloaded: the tasks are the local scene
tasks (``vtprune.integrations.lmms_eval.scenes_task``), the models a tiny random LLaVA and a tiny
random Qwen2.5-VL saved with ``save_pretrained`` and the shipped grounding stand-in (package data).

Exactness: per-sample outputs and metrics with ``--batch_size 4`` equal those of
``--batch_size 1``, and ``accelerate launch --num_processes 2 --cpu`` equals one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lmms_eval")

from vtprune.integrations.lmms_eval import families  # noqa: E402
from vtprune.integrations.lmms_eval.scenes_task import (  # noqa: E402
    documents,
    gcg_results,
    parse_phrases,
    write_tasks,
)
from vtprune.integrations.lmms_eval.tiny import save_tiny_llava, save_tiny_qwen  # noqa: E402

TIMEOUT = 900


# -- units --------------------------------------------------------------------------------
def test_entry_point_registers_the_model() -> None:
    eps = {ep.name: ep for ep in entry_points(group="lmms_eval.models")}
    assert "vtprune" in eps, "reinstall vtprune (pip install -e '.[lmms]') to register its entry point"
    from lmms_eval.models import get_model

    from vtprune.integrations.lmms_eval.model import VTPrune

    assert get_model("vtprune") is VTPrune


def test_families_refuse_what_they_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        families.family_of(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        families.family_of(str(tmp_path))
    assert families.family_of(families.GROUNDING).name == "vtprune_grounding"


def test_qwen_family_expands_each_image_to_its_own_grid(tmp_path: Path) -> None:
    """The tiny Qwen2.5-VL checkpoint loads as the qwen2_5_vl family; its processor gives
    every image of a batch its own grid (the sizes task's images: 4 to 10 visual tokens)."""
    from vtprune.integrations.lmms_eval.scenes_task import doc_to_visual

    save_tiny_qwen(tmp_path)
    family, loaded = families.load(str(tmp_path))
    assert family.name == loaded.family == "qwen2_5_vl"
    cfg = loaded.model.config
    tok = loaded.processor.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")] == [
        cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id]
    docs = documents(scenes=4)["vtprune_scenes_vqa_sizes"]
    inputs = loaded.processor(text=[loaded.prompt(d["question"]) for d in docs],
                              images=[doc_to_visual(d)[0] for d in docs], return_tensors="pt", padding=True)
    per_image = (inputs["image_grid_thw"].prod(dim=1) // 4).tolist()
    assert per_image == [9, 4, 10, 10]
    assert (inputs["input_ids"] == cfg.image_token_id).sum(dim=1).tolist() == per_image


def test_scene_tasks_score_what_they_ask() -> None:
    rows = documents(scenes=4)
    gcg = rows["vtprune_scenes_gcg"][0]
    perfect = " [SEG] ".join(gcg["phrases"]) + " [SEG]"
    assert parse_phrases(perfect) == gcg["phrases"]
    assert gcg_results(gcg, [perfect]) == {"phrase_f1": 1.0, "count_acc": 1.0}
    assert gcg_results(gcg, [""])["phrase_f1"] == 0.0
    for row in rows["vtprune_scenes_choice"]:
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
    lengths = {len(r["question"]) for r in rows["vtprune_scenes_vqa"]}
    assert len(lengths) == 3, "vqa questions must differ in length so batches get padded"


def test_loglikelihood_is_lmms_evals_loss_and_matches_a_plain_forward() -> None:
    """Teacher-forced scoring through ``generate`` (unpruned) equals the mean token loss of a
    plain forward over context + continuation, and the true first phrase wins ``argmin``."""
    import torch
    from lmms_eval.api.instance import Instance

    from vtprune.integrations.lmms_eval.model import VTPrune
    from vtprune.integrations.lmms_eval.scenes_task import doc_to_visual

    model = VTPrune("vtprune:grounding", strategy="none", batch_size=4)
    docs = documents(scenes=2)["vtprune_scenes_choice"]
    model.task_dict = {"t": {"test": docs}}
    reqs = [Instance("loglikelihood", (d["question"], " " + c, doc_to_visual, i, "t", "test"),
                     idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
            for i, d in enumerate(docs) for c in d["choices"]]
    losses = [r.text[0] for r in model.loglikelihood(reqs)]
    loaded, tok = model.loaded, model.tokenizer
    for k, req in enumerate(reqs):
        context, cont, _, i, _, _ = req.args
        inputs = loaded.processor(text=[loaded.prompt(context) + cont],
                                  images=doc_to_visual(docs[i]), return_tensors="pt")
        n = len(tok(cont, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = loaded.model(**inputs).logits.log_softmax(-1)[0]
        ids = inputs["input_ids"][0]
        t = len(ids)
        expected = -sum(float(logp[t - n - 1 + j, ids[t - n + j]]) for j in range(n)) / n
        assert losses[k] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    for i, d in enumerate(docs):
        per_choice = losses[4 * i:4 * i + 4]
        assert per_choice.index(min(per_choice)) == d["answer"]


# -- end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lmms")
    write_tasks(root / "tasks", scenes=8)
    save_tiny_llava(root / "tiny")
    save_tiny_qwen(root / "qwen")
    return {"root": root, "tasks": root / "tasks", "tiny": root / "tiny", "qwen": root / "qwen"}


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    return env


def _run(ws: dict[str, Path], name: str, model_args: str, tasks: str, batch: int,
         processes: int = 1) -> dict[str, Any]:
    out = ws["root"] / name
    cli = ["-m", "lmms_eval", "--model", "vtprune", "--model_args", model_args,
           "--tasks", tasks, "--include_path", str(ws["tasks"]), "--batch_size", str(batch),
           "--device", "cpu", "--output_path", str(out), "--log_samples", "--verbosity", "WARNING"]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
               str(processes), "--cpu", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", "29517", *cli]
    proc = subprocess.run(cmd, env=_env(ws["root"]), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=ws["root"])
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    results = sorted(out.rglob("*_results.json"))
    assert results, f"no results file under {out}:\n{proc.stdout[-3000:]}"
    data = json.loads(results[-1].read_text())
    samples: dict[str, dict[int, Any]] = {}
    for path in out.rglob("*_samples_*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            task = path.stem.split("_samples_", 1)[1]
            samples.setdefault(task, {})[int(row["doc_id"])] = row["filtered_resps"]
    data["_samples"] = samples
    return data


def _same_samples(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Generated texts identical; log-likelihoods (``[logprob, is_greedy]`` per choice, as
    strings) equal up to float32 summation order: a padded batch runs other kernels (SDPA with
    a mask) than a lone sample, so the last bits differ (observed: 2e-7 relative)."""
    assert a["_samples"].keys() == b["_samples"].keys()
    for task, docs in a["_samples"].items():
        assert docs.keys() == b["_samples"][task].keys(), task
        for doc, resp in docs.items():
            other = b["_samples"][task][doc]
            if isinstance(resp, str):
                assert resp == other, f"{task} doc {doc}: output changed with batch-mates / processes"
                continue
            assert [g for _, g in resp] == [g for _, g in other], f"{task} doc {doc}: greedy flags"
            assert [float(x) for x, _ in resp] == pytest.approx(
                [float(x) for x, _ in other], rel=1e-5), f"{task} doc {doc}: log-likelihoods"


def _metrics(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {task: {k: v for k, v in m.items() if not k.endswith("_stderr") and k != "alias"}
            for task, m in data["results"].items()}


def _pruning(data: dict[str, Any]) -> dict[str, float]:
    """The vtprune summary in the results' throughput block, without the wall-clock parts."""
    block = data.get("throughput", {})
    return {k: v for k, v in block.items()
            if k.startswith("avg_vtprune_") and "seconds" not in k and "_ms_" not in k}


TINY = "vtprune_scenes_vqa,vtprune_scenes_choice"
GCG = "vtprune_scenes_gcg,vtprune_scenes_choice"
SIZES = "vtprune_scenes_vqa_sizes,vtprune_scenes_choice"
FASTV = "strategy=fastv,keep=0.25,threads=1"
ALTP = "pretrained=vtprune:grounding,strategy=altp,keep=0.1,threads=1"
# name -> (model_args, tasks, batch size, processes), all four at once: most of a run is
# lmms-eval's start-up (importing it, indexing its ~340 built-in tasks), one core each
RUNS: dict[str, tuple[str, str, int, int]] = {
    "tiny_b1": ("pretrained={tiny}," + FASTV, TINY, 1, 1),
    "tiny_b4": ("pretrained={tiny}," + FASTV, TINY, 4, 1),
    "qwen_b1": ("pretrained={qwen},strategy=altp,keep=0.25,threads=1", SIZES, 1, 1),
    "qwen_b4": ("pretrained={qwen},strategy=altp,keep=0.25,threads=1", SIZES, 4, 1),
    "g_altp_b1": (ALTP, GCG, 1, 1),
    "g_altp_p2": (ALTP, GCG, 4, 2),
}


@pytest.fixture(scope="module")
def runs(workspace: dict[str, Path]) -> dict[str, dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> dict[str, Any]:
        args, tasks, batch, processes = RUNS[name]
        args = args.format(tiny=workspace["tiny"], qwen=workspace["qwen"])
        return _run(workspace, name, args, tasks, batch, processes)

    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        return dict(zip(RUNS, pool.map(one, RUNS)))


@pytest.mark.slow
def test_padded_batches_change_nothing(runs: dict[str, dict[str, Any]]) -> None:
    """Tiny LLaVA, FastV: questions of three lengths, so batches of 4 are left-padded."""
    one, four = runs["tiny_b1"], runs["tiny_b4"]
    assert set(one["_samples"]) == set(TINY.split(","))
    _same_samples(one, four)
    assert _metrics(one) == _metrics(four)
    summary = _pruning(one)
    assert summary["avg_vtprune_visual_tokens"] == 576
    # FastV at keep 0.25 before layer 2 of 4: the layers see 576, 576, 144, 144 visual tokens
    assert summary["avg_vtprune_visual_tokens_per_layer"] == pytest.approx(360)
    assert 0 < summary["avg_vtprune_prefill_flops_ratio"] < 1
    assert _pruning(four) == pytest.approx(summary)
    assert one["throughput"]["avg_vtprune_prune_seconds"] > 0


@pytest.mark.slow
def test_two_processes_and_batches_equal_one_process(runs: dict[str, dict[str, Any]]) -> None:
    """The grounding stand-in with ALTP at keep 0.1: batch 1 in one process = batch 4 in
    each of two processes (accelerate launch --num_processes 2 --cpu)."""
    one, two = runs["g_altp_b1"], runs["g_altp_p2"]
    _same_samples(one, two)
    assert _metrics(one) == _metrics(two)
    assert _pruning(one) == pytest.approx(_pruning(two))
    assert _pruning(one)["avg_vtprune_visual_tokens_per_layer"] == 14
    assert _pruning(one)["avg_vtprune_prefill_flops_ratio"] < 0.15


@pytest.mark.slow
def test_qwen_mixed_image_sizes_batch_like_alone(runs: dict[str, dict[str, Any]]) -> None:
    """Tiny Qwen2.5-VL, ALTP at keep 0.25: images of six sizes (4 to 15 visual tokens each,
    Qwen's own grids) and questions of three lengths, so every batch of 4 mixes visual-token
    counts and padding; batch 4 gives what batch 1 gives, generation and scoring alike."""
    one, four = runs["qwen_b1"], runs["qwen_b4"]
    assert set(one["_samples"]) == set(SIZES.split(","))
    _same_samples(one, four)
    assert _metrics(one) == _metrics(four)
    summary = _pruning(one)
    assert _pruning(four) == pytest.approx(summary)
    # 8 sizes-task images (9, 4, 10, 10, 15, 10, 9, 4 tokens) and 32 choice requests at 9
    # tokens; ALTP keeps about a quarter of each, pre-LLM (every layer sees the pruned count)
    assert 4 < summary["avg_vtprune_visual_tokens"] < 15
    assert summary["avg_vtprune_visual_tokens_per_layer"] < summary["avg_vtprune_visual_tokens"] / 2
    assert 0 < summary["avg_vtprune_prefill_flops_ratio"] < 1
