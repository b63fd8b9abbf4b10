"""GLaMM's tokenisation: the converted tokenizer follows transformers 4.28's slow LlamaTokenizer.

The reference below restates 4.28's ``PreTrainedTokenizer.tokenize`` for tokens added with
``add_tokens`` (split on them, longest first; strip the whitespace beside each; encode every
other piece with sentencepiece on its own), independently of ``GlammTokenizer``'s code.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtprune.grounding.glamm_text import GCG_INSTRUCTION, GlammTokenizer, gcg_prompt, read_answer


def slow_reference(text: str, sp, added: dict[str, int]) -> list[int]:
    pieces = [text]
    for token in sorted(added, key=len, reverse=True):  # the trie matches the longest token
        split = []
        for p in pieces:
            if p in added:
                split.append(p)
                continue
            parts = p.split(token)
            for i, part in enumerate(parts):
                if i:
                    split.append(token)
                split.append(part)
        pieces = split
    for i, p in enumerate(pieces):
        if p in added:
            if i and pieces[i - 1] not in added:
                pieces[i - 1] = pieces[i - 1].rstrip()
            if i + 1 < len(pieces) and pieces[i + 1] not in added:
                pieces[i + 1] = pieces[i + 1].lstrip()
    ids: list[int] = []
    for p in pieces:
        if p in added:
            ids.append(added[p])
        elif p:
            ids.extend(sp.encode(p))
    return ids


@pytest.fixture(scope="module")
def tok(tiny_glamm_source):
    return GlammTokenizer(tiny_glamm_source[0])


def test_gcg_prompt_tokenises_as_glamms_slow_tokenizer(tok):
    added = tok.added
    before, after = gcg_prompt().split("<image>")
    for text in (before, after):
        assert tok.encode(text) == slow_reference(text, tok.sp, added)
    # the rules by hand: no "▁" before <im_start>, none after <im_end>
    assert tok.encode("USER: The <im_start>") == tok.sp.encode("USER: The") + [added["<im_start>"]]
    assert tok.encode("<im_end> provides") == [added["<im_end>"]] + tok.sp.encode("provides")


def test_answer_tokens_around_phrases_and_seg(tok):
    a = tok.added
    ids = tok.encode("A <p> red car </p> [SEG] parked.")
    assert ids == (tok.sp.encode("A") + [a["<p>"]] + tok.sp.encode("red car")
                   + [a["</p>"], a["[SEG]"]] + tok.sp.encode("parked."))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["<p>", "</p>", "[SEG]", "<im_start>", "<im_end>", " a man",
                                 "riding ", " ", "\n", "the  dog", "."]), max_size=10))
def test_any_text_matches_the_reference(tiny_glamm_source, words):
    tok = GlammTokenizer(tiny_glamm_source[0])
    text = "".join(words)
    assert tok.encode(text) == slow_reference(text, tok.sp, tok.added)


def test_decode_and_read_answer_follow_glamms_post_processing(tok):
    text = tok.decode(tok.encode("<p> A man </p> [SEG] rides a <p> bike </p> [SEG]."))
    answer = read_answer(text)
    assert answer.phrases == ["A man", "bike"]
    assert answer.caption == "A man rides a bike ."
    assert "interleaved     segmentation" in GCG_INSTRUCTION  # the eval script's line continuation


def test_transformers_own_tokenizer_agrees_only_from_5_24(tiny_glamm_source):
    """Why vtprune restates GLaMM's rules: transformers 5.0-5.23's tokenizer for the same files
    differs around the added tokens (a "▁" before <im_start>, around </p> and [SEG]); 5.24's
    agrees on these texts."""
    pytest.importorskip("google.protobuf")
    import transformers
    from packaging.version import Version
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(tiny_glamm_source[0]))
    tok = GlammTokenizer(tiny_glamm_source[0])
    before, after = gcg_prompt().split("<image>")
    texts = [before, after, "<p> a man </p> [SEG] rides", "USER: The <im_start>"]
    same = [fast(t, add_special_tokens=False).input_ids == tok.encode(t) for t in texts]
    assert all(same) == (Version(transformers.__version__) >= Version("5.24")), same
