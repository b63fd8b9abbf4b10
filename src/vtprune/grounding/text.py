"""Word-level vocabulary and tokenizer of the grounding stand-in (built locally, no download).

The tokenizer is a ``transformers.PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel
model, so it saves and loads with the model directory like any Hugging Face tokenizer.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from .scenes import COLOURS, SHAPES

PAD, BOS, EOS, UNK, IMAGE, SEG = "<pad>", "<s>", "</s>", "<unk>", "<image>", "[SEG]"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE, SEG)
PROMPT: tuple[str, ...] = ("describe", "and", "segment", ":")
WORDS: tuple[str, ...] = SPECIALS + PROMPT + tuple(COLOURS) + SHAPES


def vocab() -> dict[str, int]:
    """Word -> id; ids are positions in ``WORDS`` (stable across versions that only append)."""
    return {w: i for i, w in enumerate(WORDS)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``WORDS`` with pad/bos/eos/unk set."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=[IMAGE, SEG],
    )
    return fast


def encode(words: list[str]) -> list[int]:
    """Ids of ``words``; raises ``KeyError`` naming an unknown word."""
    table = vocab()
    missing = [w for w in words if w not in table]
    if missing:
        raise KeyError(f"words not in the grounding vocabulary: {missing}; known: {WORDS}")
    return [table[w] for w in words]


def decode(ids: list[int]) -> list[str]:
    """Words of ``ids`` (ids outside the vocabulary become ``<unk>``)."""
    return [WORDS[i] if 0 <= i < len(WORDS) else UNK for i in ids]


def phrases_from_words(words: list[str]) -> list[str]:
    """The phrase grounded by each ``[SEG]``: the (up to two) words just before it."""
    out: list[str] = []
    start = 0
    for i, w in enumerate(words):
        if w == SEG:
            out.append(" ".join(x for x in words[max(start, i - 2):i] if x not in SPECIALS))
            start = i + 1
    return out
