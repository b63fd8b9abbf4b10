"""The instruction's text features the LLaVA adapter hands to strategies that need them
(issue #14): which tokens, which layer's states, ragged across a padded batch."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import Schedule
from vtprune.backbones import attach
from vtprune.core import Capabilities, PruneContext, Strategy
from vtprune.models import IMAGE_ID, build_tiny_llava, make_inputs

PROMPTS = ["what is in the picture?", "count", "is there a red square on the left side?"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_tiny_llava()


@pytest.fixture(scope="module")
def inputs(model):
    images = torch.rand(3, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    return make_inputs(model, images, PROMPTS)


def spying(seen: list) -> Strategy:
    """FastV's allocation and selection on feature norms, recording the text signal."""

    def score(ctx: PruneContext) -> torch.Tensor:
        seen.append((ctx.text_features.clone(), ctx.text_valid.clone()))
        return ctx.features.float().norm(dim=-1)

    base = vtprune.get_strategy("uniform")
    return Strategy("text-spy", score, base.allocator, base.selector, Capabilities(needs=frozenset({"text_features"})))


def instruction_positions(inputs) -> list[torch.Tensor]:
    """Per sample, the positions of the real tokens after its last image token."""
    out = []
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
        last = int((ids == IMAGE_ID).nonzero().max())
        pos = torch.arange(ids.shape[0])
        out.append(pos[(pos > last) & mask.bool()])
    return out


def check_rows(text, real, reference, positions):
    """text [B, W, D] / real [B, W] against reference [B, T, D] at each sample's positions."""
    for b, pos in enumerate(positions):
        k = len(pos)
        assert real[b].tolist() == [True] * k + [False] * (real.shape[1] - k)
        torch.testing.assert_close(text[b, :k], reference[b, pos], atol=1e-6, rtol=1e-5)
        assert not text[b, k:].any()  # padding rows are zero


def test_pre_llm_text_features_are_the_instruction_embeddings(model, inputs):
    seen: list = []
    with attach(model, spying(seen), keep=0.25), torch.no_grad():
        model(**inputs)
    (text, real), = seen
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    check_rows(text, real, embeddings, instruction_positions(inputs))
    assert len({int(r.sum()) for r in real}) == 3  # the three instructions differ in length


def test_in_llm_text_features_are_the_states_entering_the_prune_layer(model, inputs):
    seen: list = []
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # [0] = embeddings
    with attach(model, spying(seen), schedule=Schedule.at_layers([(2, 0.5)])), torch.no_grad():
        model(**inputs)
    (text, real), = seen
    check_rows(text, real, hidden[2], instruction_positions(inputs))


def test_a_sample_sees_the_same_instruction_alone_and_in_a_batch(model, inputs):
    seen: list = []
    with attach(model, spying(seen), schedule=Schedule.at_layers([(1, 0.5)])), torch.no_grad():
        model(**inputs)
        alone = make_inputs(model, inputs["pixel_values"][2:], PROMPTS[2:])
        model(**alone)
    (batch_text, batch_real), (one_text, one_real) = seen
    k = int(one_real.sum())
    assert int(batch_real[2].sum()) == k
    torch.testing.assert_close(batch_text[2, :k], one_text[0, :k], atol=1e-5, rtol=1e-4)


def test_generate_with_the_cache_gets_the_signal_at_prefill(model, inputs):
    seen: list = []
    with attach(model, spying(seen), keep=0.25), torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(seen) == 1  # pruned once, at prefill
