"""Sa2VA.ground: the [SEG] token's own state, cached vs full-sequence, teacher forcing, pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import vtprune
from vtprune.grounding import load


class ForceAt(LogitsProcessor):
    """Per sample b, force token ``plan[b][step]`` at each step it names (random weights rarely
    emit [SEG]); other steps are left to the model."""

    def __init__(self, plan: list[dict[int, int]], prompt: int):
        self.plan, self.prompt = plan, prompt

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt
        for b, forced in enumerate(self.plan):
            if step in forced:
                scores[b] = -1e9
                scores[b, forced[step]] = 0
        return scores


def images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 255, (60, 90, 3), dtype=np.uint8), rng.randint(0, 255, (100, 50, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def model(tiny_sa2va_dir):
    return load(tiny_sa2va_dir)


def forcing(model, ims, plan):
    inputs, _, _ = model._inputs(ims, [model.meta["gcg_question"]] * len(ims))
    return LogitsProcessorList([ForceAt(plan, inputs["input_ids"].shape[1])])


def seg_plan(model, n=2):
    seg, eos = model.seg_id, model.eos_ids[0]
    return [{2: seg, 5: seg, 7: eos}] * n


def test_generated_results_have_one_mask_per_seg_at_image_size(model):
    ims = images()
    out = model.ground(ims, max_new_tokens=10, logits_processor=forcing(model, ims, seg_plan(model)))
    for r, im in zip(out, ims):
        assert r.masks.dtype == torch.bool and r.masks.shape == (2, *im.shape[:2])
        assert r.seg_embeddings.shape == (2, 16)
        assert r.text.count("[SEG]") == 2
    # dynamic resolution: the two images have different numbers of visual tokens
    counts = [int((r.sequence == model.image_id).sum()) for r in out]
    assert counts[0] != counts[1]


def test_cached_seg_state_is_the_full_sequence_state_at_the_seg_itself(model):
    """The state fed to SAM 2 = the no-cache forward's last-layer state at the [SEG] position
    (not p - 1, unlike GLaMM)."""
    ims = images()
    out = model.ground(ims, max_new_tokens=10, logits_processor=forcing(model, ims, seg_plan(model)))
    for im, r in zip(ims, out):
        inputs, _, _ = model._inputs([im], [model.meta["gcg_question"]])
        with torch.no_grad():
            hidden = model.qwen(input_ids=r.sequence[None], attention_mask=torch.ones_like(r.sequence)[None],
                                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                                output_hidden_states=True).hidden_states[-1][0]
        pos = torch.nonzero(r.sequence == model.seg_id)[:, 0]
        assert torch.allclose(model.projection(hidden[pos]), r.seg_embeddings, atol=1e-5)
        assert not torch.allclose(model.projection(hidden[pos - 1]), r.seg_embeddings, atol=1e-3)


def test_states_equal_sa2vas_own_selection_on_its_generate_output(model):
    """Sa2VA's predict_forward + get_seg_hidden_states, restated on one image's generate output."""
    im = images()[:1]
    processor = forcing(model, im, seg_plan(model, 1))
    ours = model.ground(im, max_new_tokens=10, logits_processor=processor)[0]
    inputs, _, _ = model._inputs(im, [model.meta["gcg_question"]])
    out = model.qwen.generate(**inputs, max_new_tokens=10, do_sample=False, output_hidden_states=True,
                              return_dict_in_generate=True, logits_processor=processor,
                              eos_token_id=model.eos_ids, pad_token_id=model.meta["pad_token_id"])
    last = torch.cat([item[-1][0] for item in out.hidden_states], dim=0)
    output_ids = out.sequences[0][:-1]
    seg_mask = output_ids == model.seg_id
    theirs = model.projection(last[-len(seg_mask):][seg_mask])
    assert torch.allclose(theirs, ours.seg_embeddings, atol=1e-6)


def test_a_seg_that_ends_the_generation_gets_no_mask(model):
    im = images()[:1]
    plan = [{2: model.seg_id, 5: model.seg_id}]  # the second [SEG] is the 6th and last token
    r = model.ground(im, max_new_tokens=6, logits_processor=forcing(model, im, plan))[0]
    assert r.text.count("[SEG]") == 2 and r.masks.shape[0] == 1


def answers_and_ids(model):
    answers = ["the <p> cat </p> [SEG] sits on <p> a mat </p> [SEG].", "<p> a dog </p> [SEG] runs"]
    ids = [model.tokenizer(a, add_special_tokens=False)["input_ids"] + [model.eos_ids[0]] for a in answers]
    return answers, [dict(enumerate(row)) for row in ids]


def test_teacher_forced_answers_equal_the_generated_path(model):
    ims = images()
    answers, plan = answers_and_ids(model)
    gen = model.ground(ims, max_new_tokens=40, logits_processor=forcing(model, ims, plan))
    forced = model.ground(ims, answers=answers)
    for g, f, a in zip(gen, forced, answers):
        assert g.text == a == f.text
        assert torch.allclose(g.seg_embeddings, f.seg_embeddings, atol=1e-5)
        assert torch.equal(g.masks, f.masks)
        assert g.phrases == f.phrases and g.caption == f.caption


def test_refer_unites_the_masks_of_the_answer(model):
    ims = images()
    masks = model.refer(ims, ["the red car", "a dog"], max_new_tokens=4)
    assert [m.shape for m in masks] == [im.shape[:2] for im in ims]
    assert all(m.dtype == torch.bool for m in masks)


@pytest.mark.parametrize("strategy", ["altp", "fastv", "uniform", "cdpruner"])
def test_pruned_grounding_keeps_the_guarantees(model, strategy):
    ims = images()
    answers, plan = answers_and_ids(model)
    base = model.ground(ims, answers=answers)
    with vtprune.attach(model, strategy, keep=1.0):
        full = model.ground(ims, answers=answers)
    for b, f in zip(base, full):  # keep 1.0 = unpruned
        assert torch.allclose(b.seg_embeddings, f.seg_embeddings, atol=1e-5)
    with vtprune.attach(model, strategy, keep=0.1) as handle:
        pruned = model.ground(ims, answers=answers)
        kept = [r.counts for r in handle.records]
        alone = [model.ground([im], answers=[a])[0] for im, a in zip(ims, answers)]
        generated = model.ground(ims, max_new_tokens=40, logits_processor=forcing(model, ims, plan))
    assert kept and all(int(c.max()) < 8 for c in kept)
    for p, a in zip(pruned, alone):  # a sample in a batch = the sample alone
        assert torch.allclose(p.seg_embeddings, a.seg_embeddings, atol=1e-5)
    assert any(not torch.allclose(b.seg_embeddings, p.seg_embeddings) for b, p in zip(base, pruned))
    assert [g.masks.shape[0] for g in generated] == [2, 1]
    after = model.ground(ims, answers=answers)  # detached: bit-identical to before
    for b, a in zip(base, after):
        assert torch.equal(b.seg_embeddings, a.seg_embeddings) and torch.equal(b.masks, a.masks)


def test_bad_inputs_are_refused_with_the_fix(model):
    with pytest.raises(ValueError, match="uint8"):
        model.ground([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="questions"):
        model.ground(images(), questions=["x"])
