"""The tiny-model factory and the offline input builder."""

import pytest
import torch

from vtprune import ContractError
from vtprune.models import (
    IMAGE_ID,
    PAD_ID,
    build_tiny_llava,
    decode,
    encode,
    make_inputs,
    tiny_llava_config,
)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_tiny_llava()


def test_config_has_llava_15_token_layout():
    cfg = tiny_llava_config()
    assert cfg.image_seq_length == 576
    assert cfg.vision_config.image_size // cfg.vision_config.patch_size == 24
    assert cfg.text_config.num_key_value_heads == 2
    assert tiny_llava_config(num_hidden_layers=6).text_config.num_hidden_layers == 6


def test_build_is_deterministic_and_eval(model):
    other = build_tiny_llava()
    assert not model.training
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    third = build_tiny_llava(seed=1)
    assert not torch.equal(third.lm_head.weight, model.lm_head.weight)


def test_make_inputs_left_and_right_padding(model):
    images = torch.rand(2, 3, 336, 336)
    left = make_inputs(model, images, ["ab", "abcd"])
    right = make_inputs(model, images, ["ab", "abcd"], padding_side="right")
    assert left["input_ids"].shape == (2, 1 + 576 + 1 + 4)
    assert (left["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [576, 576]
    assert left["attention_mask"][0, :2].tolist() == [0, 0]
    assert right["attention_mask"][0, -2:].tolist() == [0, 0]
    assert right["input_ids"][0, -1] == PAD_ID
    assert torch.equal(left["pixel_values"], images)
    assert left["pixel_values"] is not images  # never aliases the caller's tensor


def test_token_id_prompts_and_placeholders(model):
    ids = [1, IMAGE_ID, 50, 51]
    out = make_inputs(model, [torch.rand(3, 336, 336)], [ids])
    assert out["input_ids"].shape == (1, 3 + 576)
    assert decode(encode("hi <image>!")) == "hi <image>!"


def test_uint8_images_are_clip_normalised(model):
    img = torch.full((1, 3, 336, 336), 255, dtype=torch.uint8)
    px = make_inputs(model, img, ["x"])["pixel_values"]
    assert px.dtype == torch.float32 and px.max() > 1.5


def test_bad_inputs_raise(model):
    with pytest.raises(ContractError, match="336"):
        make_inputs(model, torch.rand(1, 3, 224, 224), ["x"])
    with pytest.raises(ContractError, match="prompts"):
        make_inputs(model, torch.rand(2, 3, 336, 336), ["x"])
    with pytest.raises(ContractError, match="image tokens"):
        make_inputs(model, torch.rand(1, 3, 336, 336), [[IMAGE_ID, IMAGE_ID]])


def test_save_and_load_round_trip(model, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = make_inputs(model, torch.rand(1, 3, 336, 336), ["hello"])
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, loaded(**inputs).logits, atol=1e-5)
