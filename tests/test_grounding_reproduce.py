"""The grounding table in the docs is reproducible from the shipped weights.

``benchmarks/results/grounding_bench.json`` is the recorded run behind the table in
docs/grounding.md. These tests check that the table is that run's, that the run used the
weights shipped in the package, and that rerunning cells on the full test split lands within
the reported standard error.

The recorded run segmented with fast-slic (the CPU default when it is installed). A plain
install without fast-slic segments with scikit-image, whose regions differ slightly, so ALTP's
cells are compared with their scikit-image record (``grounding_bench_skimage.json``, written by
``benchmarks/grounding_slic_backend.py``) there: like with like on either install.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vtprune.backbones import attach
from vtprune.grounding import metrics
from vtprune.grounding.bench import METRICS, evaluate_gcg, format_markdown, model_fingerprint
from vtprune.grounding.evaluate import split_items
from vtprune.grounding.model import GroundingModel, load_pretrained
from vtprune.strategies.superpixels import resolve_backend

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "grounding_bench.json"
SKIMAGE_RESULTS = ROOT / "benchmarks" / "results" / "grounding_bench_skimage.json"
CELLS = [("altp", 0.1), ("fastv", 0.1), ("cdpruner", 0.1), ("pyramiddrop", 0.25)]
# the recorded run's parameters where a default changed since it was recorded (none today;
# e.g. {"altp": {"patch_pixels": 7}} for a run from before 2026-12-01)
RECORDED_PARAMS: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def model() -> GroundingModel:
    torch.set_num_threads(1)
    return load_pretrained()


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(RESULTS.read_text())


def test_recorded_run_is_the_docs_table_from_the_shipped_weights(recorded: dict,
                                                                 model: GroundingModel) -> None:
    meta = recorded["meta"]
    assert meta["weights"] == model_fingerprint(model)
    assert meta["split"] == "test" and meta["limit"] is None
    assert meta["scenes"] == {"test": 512, "test_small": 256}
    table = format_markdown(recorded).split("\n\n")[0]
    assert table in (ROOT / "docs" / "grounding.md").read_text()


@pytest.mark.parametrize("strategy,keep", [(None, None), *CELLS])
def test_rerun_lands_within_the_reported_error(recorded: dict, model: GroundingModel,
                                               strategy: str | None, keep: float | None) -> None:
    items = split_items("test", None, model.cfg.scene)
    if strategy is None:
        expected = recorded["unpruned"]["test"]
        got = metrics.summarise(evaluate_gcg(model, items))
    else:
        row = recorded_row(recorded, strategy, keep)
        expected = row["scores"]["test"]
        with attach(model.llava, strategy, keep=keep, **RECORDED_PARAMS.get(strategy, {})):
            got = metrics.summarise(evaluate_gcg(model, items))
    for m in METRICS:
        assert abs(got[m] - expected[m]) <= expected[f"{m}_se"], (strategy, keep, m)


def recorded_row(recorded: dict, strategy: str, keep: float) -> dict:
    """The recorded cell this install should reproduce: the scikit-image record for cells that
    run SLIC when fast-slic is not installed, else the main record's."""
    rows = recorded["rows"]
    if resolve_backend("auto") == "skimage":
        skimage = json.loads(SKIMAGE_RESULTS.read_text())
        assert skimage["meta"]["weights"] == recorded["meta"]["weights"]
        rows = [r for r in skimage["rows"] if (r["strategy"], r["keep"]) == (strategy, keep)] or rows
    return next(r for r in rows if r["strategy"] == strategy and r["keep"] == keep
                and r["positions"] == "original")


def test_a_scikit_image_rerun_lands_within_its_record(model: GroundingModel) -> None:
    """Run on every install (with fast-slic too): the record a plain install compares with."""
    row = json.loads(SKIMAGE_RESULTS.read_text())["rows"][0]
    items = split_items("test", None, model.cfg.scene)
    with attach(model.llava, row["strategy"], keep=row["keep"], **row["params"]):
        got = metrics.summarise(evaluate_gcg(model, items))
    for m in METRICS:
        assert abs(got[m] - row["scores"]["test"][m]) <= row["scores"]["test"][f"{m}_se"], m


def test_the_scikit_image_record_covers_every_slic_cell(recorded: dict) -> None:
    skimage = json.loads(SKIMAGE_RESULTS.read_text())
    assert skimage["meta"]["weights"] == recorded["meta"]["weights"]
    assert skimage["meta"]["slic_backend"] == "skimage"
    slic_cells = {(s, k) for s, k in CELLS if s.startswith("altp")}
    assert slic_cells <= {(r["strategy"], r["keep"]) for r in skimage["rows"]}


def test_a_plain_install_compares_altp_with_the_scikit_image_record(recorded: dict, monkeypatch) -> None:
    import vtprune.strategies.superpixels as superpixels

    monkeypatch.setattr(superpixels, "fast_slic_available", lambda: False)
    assert recorded_row(recorded, "altp", 0.1)["params"] == {"backend": "skimage"}
    assert recorded_row(recorded, "fastv", 0.1) is next(
        r for r in recorded["rows"] if (r["strategy"], r["keep"], r["positions"]) == ("fastv", 0.1, "original"))
