"""Local lmms-eval tasks over the grounding scene generator (nothing downloaded).

``write_tasks(directory, scenes=16)`` writes a task directory for ``--include_path``:

- ``vtprune_scenes_gcg`` (generate_until): ``describe and segment :`` -> the objects in
  reading order (``red circle [SEG] white cross [SEG] ...``), the shipped grounding
  stand-in's own task; metrics ``phrase_f1`` (multiset F1 of colour-shape phrases) and
  ``count_acc`` (as many phrases as objects).
- ``vtprune_scenes_choice`` (multiple_choice, i.e. loglikelihood): which phrase comes first;
  the true first phrase against three others; metric ``acc``.
- ``vtprune_scenes_vqa`` (generate_until): English questions of different lengths (count,
  yes/no, colour) for any LLaVA checkpoint; metric ``exact_match``.
- ``vtprune_scenes_vqa_sizes`` (generate_until): the same questions with each image resized to
  one of :data:`SIZES` (height x width, cycled by index), so a batch mixes image sizes — what
  Qwen2-VL's dynamic resolution turns into different visual-token counts per sample.

Images are generated from the scene index at evaluation time (``doc_to_visual``), so the
directory holds only YAML, one JSONL file per task and a two-line ``utils.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vtprune.grounding.scenes import COLOURS, SHAPES, Scene, make_scene

PROMPT = "describe and segment :"
TASKS = ("vtprune_scenes_gcg", "vtprune_scenes_choice", "vtprune_scenes_vqa", "vtprune_scenes_vqa_sizes")
SIZES = ((192, 192), (64, 64), (96, 192), (192, 96), (128, 80), (80, 160))
"""Image sizes (height, width) of ``vtprune_scenes_vqa_sizes``, cycled over the documents."""


# -- documents ----------------------------------------------------------------------------
def _choices(scene: Scene, index: int) -> tuple[list[str], int]:
    """The true first phrase and three distractors (fixed order, seeded by the index)."""
    first = scene.phrases[0]
    pool = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in scene.phrases]
    others = [pool[(index * 7 + 11 * k) % len(pool)] for k in range(3)]
    choices = sorted({first, *others})
    while len(choices) < 4:  # distractors collided: fill deterministically
        choices = sorted({*choices, next(p for p in pool if p not in choices)})
    return choices, choices.index(first)


def _question(scene: Scene, index: int) -> tuple[str, str]:
    kind = index % 3
    if kind == 0:
        return "How many objects are in the image? Answer with a number.", str(len(scene.phrases))
    if kind == 1:
        colour, shape = list(COLOURS)[index % len(COLOURS)], SHAPES[index % len(SHAPES)]
        present = f"{colour} {shape}" in scene.phrases
        return f"Is there a {colour} {shape}? Answer yes or no.", "yes" if present else "no"
    return "What colour is the first object?", scene.phrases[0].split()[0]


def documents(split: str = "test", scenes: int = 16) -> dict[str, list[dict[str, Any]]]:
    """The rows of each task's JSONL file, keyed by task name."""
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
    for i in range(scenes):
        scene = make_scene(split, i)
        base = {"split": split, "scene": i}
        rows["vtprune_scenes_gcg"].append({**base, "question": PROMPT, "phrases": scene.phrases})
        choices, answer = _choices(scene, i)
        rows["vtprune_scenes_choice"].append({**base, "question": PROMPT, "choices": choices,
                                              "answer": answer})
        question, reply = _question(scene, i)
        rows["vtprune_scenes_vqa"].append({**base, "question": question, "answer": reply})
        rows["vtprune_scenes_vqa_sizes"].append({**base, "question": question, "answer": reply,
                                                 "size": list(SIZES[i % len(SIZES)])})
    return rows


# -- task hooks (``utils.py`` in the task directory re-exports these) ----------------------
def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The scene's image as one RGB ``PIL.Image`` (regenerated from split and index), resized
    to the document's ``size`` (height, width) when it has one."""
    import numpy as np
    from PIL import Image

    image = make_scene(str(doc["split"]), int(doc["scene"])).image
    out = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8), "RGB")
    if doc.get("size"):
        height, width = (int(v) for v in doc["size"])
        out = out.resize((width, height), Image.Resampling.BICUBIC)
    return [out]


def doc_to_text(doc: dict[str, Any]) -> str:
    return str(doc["question"])


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(doc["choices"])


def parse_phrases(text: str) -> list[str]:
    """Colour-shape phrases in generated text: each colour word followed by a shape word."""
    words = text.replace("[SEG]", " ").split()
    return [f"{a} {b}" for a, b in zip(words, words[1:]) if a in COLOURS and b in SHAPES]


def gcg_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    predicted, truth = parse_phrases(results[0]), list(doc["phrases"])
    common = sum(min(predicted.count(p), truth.count(p)) for p in set(predicted))
    f1 = 2 * common / (len(predicted) + len(truth)) if predicted or truth else 1.0
    return {"phrase_f1": f1, "count_acc": float(len(predicted) == len(truth))}


def vqa_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    reply = results[0].strip().lower().rstrip(".")
    return {"exact_match": float(reply == str(doc["answer"]).lower())}


# -- the task directory ---------------------------------------------------------------------
_UTILS = (
    '"""Hooks of the vtprune scene tasks (generated by vtprune; logic in the package)."""\n'
    "from vtprune.integrations.lmms_eval.scenes_task import (  # noqa: F401\n"
    "    doc_to_choice, doc_to_text, doc_to_visual, gcg_results, vqa_results)\n"
)


def _yaml(task: str, data: Path) -> str:
    head = [
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data))}",
        "test_split: test",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
    ]
    if task == "vtprune_scenes_choice":
        body = [
            "output_type: multiple_choice",
            "doc_to_choice: !function utils.doc_to_choice",
            "doc_to_target: answer",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    else:
        gcg = task == "vtprune_scenes_gcg"
        body = [
            "output_type: generate_until",
            "doc_to_target: " + ("phrases" if gcg else "answer"),
            "generation_kwargs:",
            f"  max_new_tokens: {25 if gcg else 8}",
            "  temperature: 0",
            "  do_sample: false",
            f"process_results: !function utils.{'gcg' if gcg else 'vqa'}_results",
            "metric_list:",
        ]
        for metric in (("phrase_f1", "count_acc") if gcg else ("exact_match",)):
            body += [f"  - metric: {metric}", "    aggregation: mean", "    higher_is_better: true"]
    return "\n".join(head + body + ["metadata:", "  version: 1.0", ""])


def write_tasks(directory: str | Path, split: str = "test", scenes: int = 16) -> list[Path]:
    """Write the three tasks (YAML + JSONL) and ``utils.py`` to ``directory``; returns the
    YAML paths. Pass the directory to lmms-eval as ``--include_path``."""
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    (d / "utils.py").write_text(_UTILS)
    paths = []
    for task, rows in documents(split, scenes).items():
        data = d / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        path = d / f"{task}.yaml"
        path.write_text(_yaml(task, data))
        paths.append(path)
    return paths
