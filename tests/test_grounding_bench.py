"""``vtprune bench grounding`` on a handful of scenes: structure and deterministic facts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vtprune.backbones import attach
from vtprune.grounding import inference as inf
from vtprune.grounding.bench import (
    format_markdown,
    generate_grounded,
    run_grounding_bench,
    write_outputs,
)
from vtprune.grounding.evaluate import evaluate, split_items
from vtprune.grounding.model import GroundingModel, load_pretrained


@pytest.fixture(scope="module")
def model() -> GroundingModel:
    torch.set_num_threads(1)
    return load_pretrained()


@pytest.fixture(scope="module")
def result(model: GroundingModel) -> dict:
    return run_grounding_bench(["random", "fastv", "pyramiddrop", "uniform"], keeps=(1.0, 0.1),
                               limit=4, seeds=(0, 1), progress=False, model=model)


def _images(model: GroundingModel, n: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)
                        for it in split_items("test", n, model.cfg.scene)])


def test_stock_generate_matches_the_evaluation_unpruned(model: GroundingModel) -> None:
    images = _images(model, 4)
    words, probs = generate_grounded(model, images)
    visual, kept = inf.full_visual(model, images)
    ref_words = inf.describe(model, visual, kept)
    ref_probs = inf.ground(model, images, visual, kept, ref_words)
    assert words == ref_words
    for p, q in zip(probs, ref_probs):
        assert p.shape == q.shape
        assert torch.allclose(p, q, atol=1e-4)


def test_unpruned_equals_evaluate(model: GroundingModel, result: dict) -> None:
    ref = evaluate(model, "test", limit=4)
    assert result["unpruned"]["test"]["miou"] == pytest.approx(ref["gcg_miou"], abs=1e-6)
    assert result["unpruned"]["test"]["ap50"] == pytest.approx(ref["gcg_ap50"], abs=1e-6)
    assert result["unpruned"]["test"]["recall"] == pytest.approx(ref["gcg_recall"], abs=1e-6)


def test_structure(result: dict) -> None:
    assert set(result) == {"meta", "unpruned", "validity", "rows", "skipped"}
    assert result["meta"]["scenes"] == {"test": 4, "test_small": 4}
    cells = {(r["strategy"], r["keep"], r["positions"]) for r in result["rows"]}
    cells |= {(s["strategy"], s["keep"], s["positions"]) for s in result["skipped"]}
    assert ("fastv", 0.1, "compact") in cells and ("fastv", 0.1, "original") in cells
    assert ("random", 0.1, "original") in cells and ("random", 0.1, "compact") not in cells
    for r in result["rows"]:
        for split in ("test", "test_small"):
            s = r["scores"][split]
            for m in ("miou", "ap50", "recall"):
                assert 0.0 <= s[m] <= 1.0 and s[f"{m}_se"] >= 0.0
    rnd = [r for r in result["rows"] if r["strategy"] == "random"]
    assert rnd and all(r["seeds"] == 2 for r in rnd)
    low = [r for r in result["rows"] if r["keep"] == 0.1 and r["strategy"] == "uniform"]
    assert low[0]["first_prune_tokens"] == 14.0     # keep_count(0.1, 144)


def test_keep_one_equals_unpruned_exactly(result: dict) -> None:
    full = [r for r in result["rows"] if r["keep"] == 1.0 and r["layer_tokens"] == [144] * 4]
    assert {r["strategy"] for r in full} == {"random", "fastv", "uniform", "pyramiddrop"}
    # pyramiddrop's keep is its mean share from the first boundary on, halving per stage:
    # 0.1 averages 14 tokens; keep 1.0 keeps everything (keep-all is the identity).
    assert not result["skipped"]
    pd = [r for r in result["rows"] if r["strategy"] == "pyramiddrop"]
    assert [r["layer_tokens"] for r in pd] == [[144] * 4, [144, 25, 12, 6]]
    for r in full:
        if r["keep"] == 1.0:
            for split, base in result["unpruned"].items():
                for m in ("miou", "ap50", "recall"):
                    assert r["scores"][split][m] == base[m], (r["strategy"], split, m)


def test_validity_rows_match_the_evaluation(model: GroundingModel, result: dict) -> None:
    assert set(result["validity"]) == {"none", "noise", "oracle"}
    for mode, scores in result["validity"].items():
        ref = evaluate(model, "test", limit=4, mode=mode)
        assert scores["test"]["miou"] == pytest.approx(ref["gcg_miou"], abs=1e-6)
        ratio = scores["test"]["miou"] / result["unpruned"]["test"]["miou"]
        assert scores["test"]["miou_ratio"] == pytest.approx(ratio)
        assert ("pass" in scores["test"]) == (mode != "oracle")
        if mode != "oracle":
            assert scores["test"]["pass"] == (ratio <= 0.30)
    table = format_markdown(result)
    assert "| *validity: none (keep 0)* |" in table and "Validity (GCG mIoU" in table


def test_attach_really_prunes(model: GroundingModel) -> None:
    images = _images(model, 2)
    with attach(model.llava, "fastv", keep=0.1) as handle:
        generate_grounded(model, images)
        assert handle.records and handle.records[0].layer == 2
        assert handle.records[0].counts.tolist() == [14, 14]


def test_bad_input_is_refused(model: GroundingModel) -> None:
    with pytest.raises(ValueError, match="unknown strategies"):
        run_grounding_bench(["nope"], keeps=(0.5,), limit=1, progress=False, model=model)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        run_grounding_bench(["random"], keeps=(1.5,), limit=1, progress=False, model=model)


def test_outputs_written(result: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    paths = write_outputs(result, tmp_path)
    assert json.loads(paths["json"].read_text())["meta"]["limit"] == 4
    assert "| unpruned |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_refused_schedule_is_skipped_with_its_reason(model: GroundingModel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import vtprune.backbones

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("prune layer 24 does not exist in a 4-layer decoder")

    monkeypatch.setattr(vtprune.backbones, "attach", refuse)
    res = run_grounding_bench(["uniform"], keeps=(0.5,), limit=1, progress=False, model=model,
                              small_split=None)
    assert res["rows"] == []
    assert res["skipped"] == [{"strategy": "uniform", "keep": 0.5, "positions": "original",
                               "reason": "ValueError: prune layer 24 does not exist in a "
                                         "4-layer decoder"}]
    assert "Skipped:" in format_markdown(res)
