"""Tiny random LLaVA and Qwen2.5-VL checkpoints with real processors, saved like Hub
checkpoints (nothing downloaded).

``save_tiny_llava(directory)`` writes ``vtprune.models.build_tiny_llava()`` (LLaVA-1.5 token
layout: 336 px, 576 visual tokens) with a ``LlavaProcessor``: CLIP image processing and a
byte-level BPE tokenizer without merges over the toy vocabulary (0 pad, 1 bos, 2 eos,
3 ``<image>``, then the 256 byte symbols). ``pretrained=DIRECTORY`` then loads through the
same ``from_pretrained`` path as a downloaded checkpoint. Random weights: outputs are
gibberish, which is what an exactness test wants (any batch effect shows).

``save_tiny_qwen(directory)`` writes ``vtprune.models.build_tiny_qwen("qwen2_5_vl")`` (or
``"qwen2_vl"``) with a ``Qwen2_5_VLProcessor``: Qwen's own image processor, ``min_pixels`` /
``max_pixels`` 56x56 .. 112x112 so an image becomes 4-16 visual tokens (each image its own
grid), the same byte tokenizer with Qwen's ``<|image_pad|>`` at the toy image id 3 and
``<|vision_start|>`` / ``<|vision_end|>`` / ``<|video_pad|>`` at 260-262 (the tiny config's
ids), and a minimal chat template (``user: <|vision_start|><|image_pad|><|vision_end|>TEXT``
then `` assistant:``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vtprune.models import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_ID,
    VIDEO_ID,
    VISION_END_ID,
    VISION_START_ID,
    build_tiny_llava,
    build_tiny_qwen,
)

QWEN_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>")
"""Appended after the 256 byte symbols: ids 260, 261, 262 (``vtprune.models``' Qwen ids)."""
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def byte_tokenizer(image_token: str = "<image>", extra: tuple[str, ...] = ()) -> Any:
    """A ``PreTrainedTokenizerFast``: byte-level, one token per byte, toy-vocabulary ids
    (``image_token`` at 3, the ``extra`` special tokens after the bytes, from 260)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", image_token]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(specials + alphabet + list(extra))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=[image_token, *extra], padding_side="left")


def save_tiny_llava(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny model, its generation config and processor to ``directory``."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    d = Path(directory)
    model = build_tiny_llava(seed=seed)
    size = int(model.config.vision_config.image_size)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=byte_tokenizer(),
        patch_size=int(model.config.vision_config.patch_size),
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token="<image>")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


def save_tiny_qwen(directory: str | Path, family: str = "qwen2_5_vl", seed: int = 0,
                   min_pixels: int = 56 * 56, max_pixels: int = 112 * 112) -> Path:
    """Write a tiny random Qwen2.5-VL (``family="qwen2_vl"``: Qwen2-VL) and its processor."""
    import transformers

    d = Path(directory)
    tokenizer = byte_tokenizer("<|image_pad|>", QWEN_SPECIALS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", *QWEN_SPECIALS)}
    expected = dict(zip(("<|image_pad|>", *QWEN_SPECIALS), (IMAGE_ID, VISION_START_ID, VISION_END_ID, VIDEO_ID)))
    if ids != expected:  # the tiny config's ids are vtprune.models' constants
        raise AssertionError(f"tokenizer ids {ids} differ from the tiny Qwen config's {expected}")
    model = build_tiny_qwen(family, seed=seed)
    image_processor = transformers.Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[family]
    video_processor = transformers.Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = getattr(transformers, processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d
