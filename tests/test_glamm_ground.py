"""GLaMM.ground: the [SEG] state, cached vs no-cache decoding, pruning through vtprune.attach."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import vtprune
from vtprune.grounding import load


class ForceSeg(LogitsProcessor):
    """Random weights rarely emit [SEG]: force it at given steps, then EOS at the last."""

    def __init__(self, seg: int, eos: int, prompt: int, steps=(2, 5), end: int = 7):
        self.seg, self.eos, self.prompt, self.steps, self.end = seg, eos, prompt, steps, end

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt
        forced = self.seg if step in self.steps else self.eos if step == self.end else None
        if forced is not None:
            scores = torch.full_like(scores, -1e9)
            scores[:, forced] = 0
        return scores


def images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 255, (48, 64, 3), dtype=np.uint8), rng.randint(0, 255, (80, 40, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def model(tiny_glamm_dir):
    return load(tiny_glamm_dir)


def force(model):
    return LogitsProcessorList([ForceSeg(model.seg_id, model.tokenizer.eos_id, len(model.prompt_ids()))])


def test_generated_results_have_one_mask_per_seg_at_image_size(model):
    out = model.ground(images(), max_new_tokens=10, logits_processor=force(model))
    for r, im in zip(out, images()):
        assert r.masks.dtype == torch.bool and r.masks.shape == (2, *im.shape[:2])
        assert r.seg_embeddings.shape == (2, 16)
        assert r.text.count("[SEG]") == 2
        assert int((r.sequence == model.image_id).sum()) == 16


def test_seg_state_is_the_no_cache_state_before_each_seg(model):
    """Cached generation's state at each emitted [SEG] = the full-sequence state at p - 1."""
    out = model.ground(images(), max_new_tokens=10, logits_processor=force(model))
    pixels = model._pixels(images())
    for i, r in enumerate(out):
        with torch.no_grad():
            hidden = model.llava(input_ids=r.sequence[None], pixel_values=pixels[i: i + 1],
                                 output_hidden_states=True).hidden_states[-1][0]
        pos = torch.nonzero(r.sequence == model.seg_id)[:, 0]
        assert torch.allclose(model.projection(hidden[pos - 1]), r.seg_embeddings, atol=1e-5)


def test_no_cache_decoding_matches_cached(model):
    cached = model.ground(images(), max_new_tokens=10, logits_processor=force(model))
    plain = model.ground(images(), max_new_tokens=10, logits_processor=force(model), use_cache=False)
    for a, b in zip(cached, plain):
        assert torch.equal(a.sequence, b.sequence)
        assert torch.allclose(a.seg_embeddings, b.seg_embeddings, atol=1e-5)


class ForceIds(LogitsProcessor):
    """Generate exactly ``ids[b]`` for sample b (then EOS)."""

    def __init__(self, ids: list[list[int]], eos: int, prompt: int):
        self.ids, self.eos, self.prompt = ids, eos, prompt

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt
        scores = torch.full_like(scores, -1e9)
        for b, row in enumerate(self.ids):
            scores[b, row[step] if step < len(row) else self.eos] = 0
        return scores


def test_teacher_forced_answers_equal_the_generated_path(model):
    answers = ["<p> a man </p> [SEG] rides <p> a bike </p> [SEG]", "the <p> dog </p> [SEG]."]
    ids = [model.tokenizer.encode(a) for a in answers]
    forcing = LogitsProcessorList([ForceIds(ids, model.tokenizer.eos_id, len(model.prompt_ids()))])
    gen = model.ground(images(), max_new_tokens=60, logits_processor=forcing)
    forced = model.ground(images(), answers=answers)
    for g, f in zip(gen, forced):
        assert torch.allclose(g.seg_embeddings, f.seg_embeddings, atol=1e-5)
        assert torch.equal(g.masks, f.masks)
        assert g.phrases == f.phrases and f.caption == g.caption


@pytest.mark.parametrize("strategy", ["altp", "fastv", "pyramiddrop"])
def test_pruned_grounding_keeps_the_guarantees(model, strategy):
    ims = images()
    answers = ["<p> a </p> [SEG] and <p> b </p> [SEG]", "the <p> c </p> [SEG]"]
    base = model.ground(ims, answers=answers)
    with vtprune.attach(model, strategy, keep=1.0):
        full = model.ground(ims, answers=answers)
    for b, f in zip(base, full):  # keep 1.0 = unpruned
        assert torch.allclose(b.seg_embeddings, f.seg_embeddings, atol=1e-5)
    with vtprune.attach(model, strategy, keep=0.1) as handle:
        pruned = model.ground(ims, answers=answers)
        kept = handle.records[0].counts
        alone = [model.ground([im], answers=[a])[0] for im, a in zip(ims, answers)]
        generated = model.ground(ims, max_new_tokens=10, logits_processor=force(model))
    assert int(kept.max()) < 16
    for p, a in zip(pruned, alone):  # a sample in a batch = the sample alone
        assert torch.allclose(p.seg_embeddings, a.seg_embeddings, atol=1e-5)
    assert any(not torch.allclose(b.seg_embeddings, p.seg_embeddings) for b, p in zip(base, pruned))
    assert all(g.masks.shape[0] == 2 for g in generated)
    after = model.ground(ims, answers=answers)  # detached: bit-identical to before
    for b, a in zip(base, after):
        assert torch.equal(b.seg_embeddings, a.seg_embeddings)


def test_bad_images_are_refused_with_the_fix(model):
    with pytest.raises(ValueError, match="uint8"):
        model.ground([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="answers"):
        model.ground(images(), answers=["x"])


def test_load_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="vtprune convert glamm"):
        load(tmp_path)
