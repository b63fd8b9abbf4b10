"""The grounding table's SLIC cells rerun with scikit-image's SLIC (no fast-slic).

ALTP's regions come from SLIC; fast-slic (the default on a CPU when installed) and
scikit-image segment slightly differently, so a plain install without fast-slic lands a few
thousandths away from the recorded table. This script records those cells with
``backend="skimage"`` on the same split and weights, beside the main record, so that
``tests/test_grounding_reproduce.py`` compares like with like on either install:

    .venv/bin/python benchmarks/grounding_slic_backend.py    # writes results/grounding_bench_skimage.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vtprune.backbones import attach
from vtprune.grounding.bench import bootstrap, evaluate_gcg, model_fingerprint
from vtprune.grounding.evaluate import split_items
from vtprune.grounding.model import load_pretrained

OUT = Path(__file__).parent / "results" / "grounding_bench_skimage.json"
CELLS = [("altp", 0.1)]  # the reproduction test's cells whose strategy runs SLIC


def main() -> None:
    torch.set_num_threads(1)
    model = load_pretrained()
    items = split_items("test", None, model.cfg.scene)
    started = time.time()
    rows = []
    for strategy, keep in CELLS:
        with attach(model.llava, strategy, keep=keep, backend="skimage"):
            scores = bootstrap(evaluate_gcg(model, items))
        rows.append({"strategy": strategy, "keep": keep, "positions": "original",
                     "params": {"backend": "skimage"}, "scores": {"test": scores}})
    OUT.write_text(json.dumps({
        "meta": {"split": "test", "weights": model_fingerprint(model), "slic_backend": "skimage",
                 "seconds": round(time.time() - started, 1),
                 "date_utc": time.strftime("%Y-%m-%d", time.gmtime())},
        "rows": rows}, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
