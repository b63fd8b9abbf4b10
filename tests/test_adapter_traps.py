"""Traps found by using the LLaVA adapter as a user would (issue #10 §4): each test failed
before its fix."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import ContractError
from vtprune.backbones import attach
from vtprune.backbones.compat import cache_kwarg
from vtprune.core import Capabilities, Strategy
from vtprune.models import build_tiny_llava, make_inputs

PROMPTS = ["describe the image", "how many cats are there?", "colours?"]


@pytest.fixture(scope="module")
def model():
    return build_tiny_llava()


@pytest.fixture(scope="module")
def batch(model):
    torch.manual_seed(0)
    return make_inputs(model, torch.rand(3, 3, 336, 336), PROMPTS)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_entering_a_detached_handle_attaches_again(model, batch):
    unpruned = logits(model, batch).shape[1]
    handle = attach(model, "uniform", keep=0.25)
    handle.detach()
    with handle:
        assert handle.attached
        assert logits(model, batch).shape[1] == unpruned - 576 + 144
    assert not handle.attached and logits(model, batch).shape[1] == unpruned
    other = attach(model, "random", keep=0.5)
    try:
        with pytest.raises(ContractError, match="already"), handle:
            pass
    finally:
        other.detach()


def test_labels_while_attached_get_a_clear_error(model, batch):
    labels = batch["input_ids"].clone()
    with attach(model, "uniform", keep=0.25), pytest.raises(ContractError, match="labels are not supported"):
        model(**batch, labels=labels)
    assert model(**batch, labels=labels).loss is not None  # detached: the model's own loss


def test_a_per_call_vision_feature_layer_is_not_silently_ignored(model, batch):
    base = vtprune.get_strategy("uniform")
    needs_cls = Capabilities(needs=frozenset({"cls_attention"}))
    strategy = Strategy("cls-mean", lambda ctx: ctx.cls_attention.mean(dim=1), base.allocator, base.selector, needs_cls)
    with attach(model, strategy, keep=0.25), pytest.raises(ContractError, match="vision_feature_layer=-1"):
        model(**batch, vision_feature_layer=-1)
    with attach(model, strategy, keep=0.25):  # the configured layer, passed explicitly, is fine
        model(**batch, vision_feature_layer=model.config.vision_feature_layer)
    with attach(model, "uniform", keep=0.25):  # strategies without [CLS] attention may vary it
        model(**batch, vision_feature_layer=-1)


def test_names_ignore_case(model, batch):
    assert vtprune.get_strategy("ALTP").name == "altp"
    with attach(model, "FastV", keep=0.5) as handle:
        assert handle.strategy.name == "fastv"
    with pytest.raises(vtprune.UnknownNameError, match="Did you mean 'pyramiddrop'"):
        vtprune.get_strategy("PyramidDorp")


@pytest.mark.parametrize("strategy", ["altp", "fastv", "uniform"])
def test_a_nan_image_names_its_sample(model, batch, strategy):
    bad = dict(batch)
    bad["pixel_values"] = batch["pixel_values"].clone()
    bad["pixel_values"][1, 0, 5, 5] = float("nan")
    with attach(model, strategy, keep=0.25), pytest.raises(ContractError, match=r"sample\(s\) \[1\]"):
        model(**bad)
    assert not torch.isnan(batch["pixel_values"]).any()  # the user's tensor is untouched


@pytest.mark.parametrize("strategy", ["altp", "uniform", "fastv"])
def test_image_tokens_without_pixels_get_one_user_level_error(model, batch, strategy):
    no_pixels = {k: v for k, v in batch.items() if k != "pixel_values"}
    with attach(model, strategy, keep=0.25), pytest.raises(ContractError, match="no pixel_values were passed"):
        model(**no_pixels)


def test_cache_error_does_not_blame_beam_search(model, batch):
    with attach(model, "fastv", keep=0.5), torch.no_grad():
        out = model(**batch, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.crop(-2)
        step = {"input_ids": batch["input_ids"][:, -1:], "use_cache": True,
                "attention_mask": torch.cat([batch["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1)}
        key = cache_kwarg(model)
        with pytest.raises(ContractError) as err:
            model(**step, **{key: cache})
    message = str(err.value)
    assert "beam search is" in message and "beam search are not supported" not in message


def test_a_generated_image_token_id_in_a_decode_step_is_text(model, batch):
    """A decode step may feed back a generated token that happens to be the image id: that is
    not a prompt without pixels (seen on transformers 5.0, where greedy output hit id 3)."""
    from vtprune.models import IMAGE_ID

    with attach(model, "fastv", keep=0.5), torch.no_grad():
        out = model(**batch, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        key = cache_kwarg(model)
        mask = torch.cat([batch["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1)
        step = model(input_ids=torch.full((3, 1), IMAGE_ID), attention_mask=mask, use_cache=True, **{key: cache})
    assert step.logits.shape[1] == 1
