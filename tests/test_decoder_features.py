"""The LLaVA adapter runs a decoder exactly or refuses it: the explicit table of decoder
features (docs/adapters.md, "Supported decoder features") checked at attach, and sliding
windows refused per call once the sequence outgrows them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vtprune import ContractError
from vtprune.backbones import UnsupportedModelError, attach
from vtprune.models import _TEXT_DEFAULTS, make_inputs, tiny_llava_config

PROMPTS = ["describe the image", "how many cats are there?"]


def llava_with(text_cls_name: str, **text: Any) -> Any:
    """A tiny LLaVA whose language model is ``text_cls_name`` (a transformers config class)."""
    import transformers
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    base = tiny_llava_config()
    text_cfg = getattr(transformers, text_cls_name)(**{**_TEXT_DEFAULTS, **text})
    cfg = LlavaConfig(
        vision_config=base.vision_config, text_config=text_cfg, image_seq_length=576,
        image_token_id=base.image_token_id, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def batch(model: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return make_inputs(model, torch.rand(2, 3, 336, 336), PROMPTS)


@pytest.mark.parametrize(
    ("config", "text", "named"),
    [
        ("GraniteConfig", {"embedding_multiplier": 12.0}, "embedding_multiplier"),
        ("GraniteConfig", {"embedding_multiplier": 1.0, "residual_multiplier": 0.22}, "residual_multiplier"),
        ("Qwen3Config", {"head_dim": 16}, "'qwen3' is not in"),  # per-head q/k norms replay; the type is unlisted
    ],
)
def test_decoders_the_loop_cannot_replay_are_refused_at_attach(config, text, named):
    model = llava_with(config, **text)
    with pytest.raises(UnsupportedModelError, match=named):
        attach(model, "uniform", keep=0.5)


def test_a_q_norm_over_all_heads_is_refused_by_name():
    """Per-head q/k norms (Qwen3-VL) are replayed by the attention recomputation; a norm over
    the whole projection (OLMo2's) is not, and is named."""
    model = llava_with("Qwen3Config", head_dim=16)
    attn = model.model.language_model.layers[0].self_attn
    attn.q_norm = torch.nn.RMSNorm(attn.q_proj.out_features)
    with pytest.raises(UnsupportedModelError, match="q_norm"):
        attach(model, "uniform", keep=0.5)


def test_an_unlisted_decoder_type_is_refused_by_name():
    model = llava_with("GraniteConfig", embedding_multiplier=1.0, residual_multiplier=1.0)
    with pytest.raises(UnsupportedModelError, match="'granite' is not in"):
        attach(model, "fastv", keep=0.5)


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ("MistralConfig", {"sliding_window": 64}),
        ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}),
    ],
)
def test_a_sequence_longer_than_the_sliding_window_is_refused(config, text):
    model = llava_with(config, **text)
    inputs = batch(model)
    with attach(model, "uniform", keep=1.0), pytest.raises(ContractError, match="sliding window of 64"):
        model(**inputs)
    with attach(model, "fastv", keep=0.5), pytest.raises(ContractError, match="sliding window of 64"):
        model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)


def test_a_window_longer_than_the_sequence_runs_exactly():
    """Mistral's default window (4096) is longer than these prompts: keep-all equals unpruned,
    and generation past the prompt stays exact while it fits; beyond it, a clear error."""
    model = llava_with("MistralConfig", sliding_window=4096)
    inputs = batch(model)
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with attach(model, "fastv", keep=1.0), torch.no_grad():
        got = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    window = inputs["input_ids"].shape[1] + 2
    model.config.text_config.sliding_window = window
    with attach(model, "fastv", keep=0.5), pytest.raises(ContractError, match=f"window of {window}"):
        model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
