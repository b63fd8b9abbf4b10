"""GLaMM's text side: its tokenizer's behaviour, the GCG prompt, and reading its answers.

GLaMM tokenised with transformers 4.28's slow sentencepiece ``LlamaTokenizer``, with its
added tokens (``<im_start>``, ``[SEG]``, ``<p>`` ...) registered through ``add_tokens``. That
tokenizer splits the text on added tokens, strips the whitespace on both sides of each one,
and encodes every remaining piece with sentencepiece on its own (so each piece starts with
the ``▁`` dummy prefix). transformers 5's tokenizers-backed Llama tokenizer does not (it keeps
a ``▁`` before ``<im_start>`` and around ``[SEG]`` / ``</p>``), so :class:`GlammTokenizer`
restates the 4.28 rules on the checkpoint's own ``tokenizer.model`` (PyPI ``sentencepiece``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# llava_v1's system turn and the GCG instruction as GLaMM's eval/gcg/infer.py sends them: the
# instruction there is a string with a backslash line continuation, which keeps the next
# line's four spaces of indentation inside it ("interleaved     segmentation").
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
GCG_INSTRUCTION = ("Could you please give me a detailed description of the image? Please respond "
                   "with interleaved     segmentation masks for the corresponding parts of the answer.")
IMAGE = "<image>"


def gcg_prompt(instruction: str = GCG_INSTRUCTION) -> str:
    """The full llava_v1 prompt GLaMM's GCG evaluation feeds (``<image>`` not yet expanded)."""
    user = f"The <im_start>{IMAGE}<im_end> provides an overview of the picture.\n{instruction}"
    return f"{SYSTEM} USER: {user} ASSISTANT:"


class GlammTokenizer:
    """GLaMM's slow-tokenizer behaviour on a sentencepiece model plus ``added_tokens.json``.

    ``encode(text)`` -> ids without BOS; ``decode(ids)`` joins sentencepiece pieces and added
    tokens with single spaces (4.28's ``spaces_between_special_tokens``).
    """

    def __init__(self, directory: str | Path):
        import sentencepiece as spm

        d = Path(directory)
        if not (d / "tokenizer.model").is_file():
            raise FileNotFoundError(f"{d / 'tokenizer.model'} not found: GLaMM's sentencepiece model")
        self.sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
        added = json.loads((d / "added_tokens.json").read_text()) if (d / "added_tokens.json").is_file() else {}
        self.added: dict[str, int] = {str(k): int(v) for k, v in added.items()}
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.specials = {self.sp.id_to_piece(i): i for i in (self.bos_id, self.eos_id, self.sp.unk_id())}
        self.by_id = {v: k for k, v in {**self.specials, **self.added}.items()}
        # longest first, as the tokenizer's trie matches
        words = sorted({**self.added, **self.specials}, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, words)) + ")") if words else None

    def __len__(self) -> int:
        return max([self.sp.get_piece_size() - 1, *self.added.values()]) + 1

    def token_id(self, token: str) -> int:
        """Id of an added or special token; ``KeyError`` naming the known ones otherwise."""
        known = {**self.specials, **self.added}
        if token not in known:
            raise KeyError(f"{token!r} is not an added token of this tokenizer: {sorted(known)}")
        return known[token]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no BOS), by the 4.28 slow-tokenizer rules (module docstring)."""
        parts = self._split.split(text) if self._split else [text]
        for i, part in enumerate(parts):
            if part in self.added:  # added tokens eat the whitespace beside them
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        ids: list[int] = []
        for part in parts:
            if not part:
                continue
            if part in self.added or part in self.specials:
                ids.append(self.added.get(part, self.specials.get(part, 0)))
            else:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``: pieces decoded by sentencepiece, added/special tokens verbatim,
        joined by single spaces."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self.by_id:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self.by_id[i])
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return " ".join(out)


@dataclass(frozen=True)
class Answer:
    """A GCG answer read as GLaMM's evaluation reads it."""

    text: str
    caption: str
    phrases: list[str]


def read_answer(text: str) -> Answer:
    """GLaMM's post-processing (eval/gcg/infer.py): phrases are the ``<p>...</p>`` contents,
    the caption is the text with every ``<...>`` tag and ``[SEG]`` removed, spaces collapsed."""
    text = text.replace("\n", "").replace("  ", " ")
    phrases = [p.strip() for p in re.findall(r"<p>(.*?)</p>", text)]
    caption = re.sub(r"<.*?>", "", text).replace("[SEG]", "")
    caption = " ".join(caption.split()).strip("'").strip()
    return Answer(text, caption, phrases)
