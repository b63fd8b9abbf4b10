"""A tiny random LLaVA with a real processor, saved like a Hub checkpoint (nothing downloaded).

``save_tiny_llava(directory)`` writes ``vtprune.models.build_tiny_llava()`` (LLaVA-1.5 token
layout: 336 px, 576 visual tokens) with a ``LlavaProcessor``: CLIP image processing and a
byte-level BPE tokenizer without merges over the toy vocabulary (0 pad, 1 bos, 2 eos,
3 ``<image>``, then the 256 byte symbols). ``pretrained=DIRECTORY`` then loads through the
same ``from_pretrained`` path as a downloaded checkpoint. Random weights: outputs are
gibberish, which is what an exactness test wants (any batch effect shows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vtprune.models import CLIP_MEAN, CLIP_STD, build_tiny_llava


def byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast``: byte-level, one token per byte, toy-vocabulary ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<image>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=["<image>"], padding_side="left")


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
