"""GLaMM on transformers 5: LLaVA + SAM + the ``[SEG]`` projection, loaded from a converted folder.

``GLaMM.load(OUT_DIR)`` reads what ``vtprune convert glamm`` wrote; ``model.ground(images)``
writes the grounded description and one mask per ``[SEG]``. ``vtprune.attach(model, ...)``
prunes the LLaVA part (``model.llava``, a plain ``LlavaForConditionalGeneration``); SAM always
encodes the full image, as in the paper.

Which state feeds SAM: the last-layer state that *predicts* each ``[SEG]`` (GLaMM's
``model/GLaMM.py`` takes position p - 1 of a ``[SEG]`` at p). In cached generation that is the
last position's state of the step that emitted the ``[SEG]``: no position arithmetic, so it
holds under any pruning. Teacher-forced answers (``answers=[...]``) are left-padded, so the
answer keeps its distance from the end whatever visual tokens a strategy drops.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import sam as sam_ops
from .glamm_text import IMAGE, GlammTokenizer, read_answer

ImageLike = Any  # numpy uint8 [H, W, 3] or a PIL image


@dataclass
class GroundingResult:
    """One image's grounded answer.

    text: decoded answer; caption: tags and ``[SEG]`` removed; phrases: ``<p>`` contents;
    masks: bool [n, H, W] at the image's own size, one per ``[SEG]``; seg_embeddings:
    float [n, P] (P = SAM's prompt width, 256), what SAM's prompt received; sequence: long [T]
    token ids the LLM saw (prompt with image tokens expanded, then the answer); prompt_length:
    how many of them are the prompt.
    """

    text: str
    caption: str
    phrases: list[str]
    masks: torch.Tensor
    seg_embeddings: torch.Tensor
    sequence: torch.Tensor
    prompt_length: int = 0


def as_uint8(image: ImageLike) -> np.ndarray:
    """An RGB image as uint8 [H, W, 3]; raises ``ValueError`` saying what was given."""
    arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"images must be uint8 RGB arrays [H, W, 3] or PIL images, got {arr.dtype} {arr.shape}; "
            "convert floats with (x * 255).round().astype(np.uint8)")
    return arr


def clip_pixels(image: np.ndarray, shortest_edge: int, crop: int, mean: Sequence[float],
                std: Sequence[float]) -> torch.Tensor:
    """CLIP input [3, crop, crop]: shortest side to ``shortest_edge`` (PIL bicubic, long side
    truncated), centre crop, scale to [0, 1], normalise (GLaMM's ``CLIPImageProcessor``)."""
    from PIL import Image

    h, w = image.shape[:2]
    if w <= h:
        size = (shortest_edge, int(shortest_edge * h / w))       # (width, height)
    else:
        size = (int(shortest_edge * w / h), shortest_edge)
    if size != (w, h):
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    h, w = image.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = torch.from_numpy(image[top: top + crop, left: left + crop].astype(np.float32) / 255.0)
    x = x.permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_projection(path: Path) -> nn.Sequential:
    """The ``[SEG]`` projection (``text_hidden_fcs``) a converter wrote: Linear(d, d), ReLU,
    Linear(d, P), sizes from the tensors."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    hidden, out = state["0.weight"].shape[1], state["2.weight"].shape[0]
    projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))
    projection.load_state_dict(state)
    return projection


class GLaMM(nn.Module):
    """GLaMM from a converted folder: ``llava``, ``sam``, ``projection``, ``tokenizer``, ``meta``."""

    llava: Any  # LlavaForConditionalGeneration
    sam: Any  # SamModel
    projection: nn.Sequential

    def __init__(self, llava: nn.Module, sam: nn.Module, projection: nn.Sequential,
                 tokenizer: GlammTokenizer, meta: dict):
        super().__init__()
        self.llava, self.sam, self.projection = llava, sam, projection
        self.tokenizer, self.meta = tokenizer, meta
        self.seg_id = int(meta["tokens"]["[SEG]"])
        self.image_id = int(meta["image_token_id"])

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype | None = None,
             device: str | torch.device | None = None) -> GLaMM:
        """Load ``vtprune convert glamm``'s output (float32 on the CPU unless told otherwise)."""
        from transformers import LlavaForConditionalGeneration, SamModel

        d = Path(directory)
        if not (d / "glamm.json").is_file():
            raise FileNotFoundError(f"{d / 'glamm.json'} not found: convert a checkpoint with "
                                    "`vtprune convert glamm CHECKPOINT --clip CLIP --out DIR` first")
        meta = json.loads((d / "glamm.json").read_text())
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        llava = LlavaForConditionalGeneration.from_pretrained(d / "llava", **kwargs)
        sam = SamModel.from_pretrained(d / "sam", **kwargs)
        projection = load_projection(d / "seg_projection.safetensors")
        model = cls(llava, sam, projection, GlammTokenizer(d / "tokenizer"), meta)
        if dtype is not None:
            model.projection.to(dtype)
        return model.to(device).eval() if device is not None else model.eval()

    def vtprune_backbone(self) -> nn.Module:
        """The model ``vtprune.attach`` prunes: the LLaVA part."""
        return self.llava

    # -- inputs ---------------------------------------------------------------------------
    def prompt_ids(self) -> list[int]:
        """``<s>`` + the GCG prompt with ``<image>`` expanded to the image tokens."""
        before, after = self.meta["prompt"].split(IMAGE)
        tok = self.tokenizer
        return ([tok.bos_id] + tok.encode(before) + [self.image_id] * int(self.meta["num_image_tokens"])
                + tok.encode(after))

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        c = self.meta["clip"]
        x = torch.stack([clip_pixels(im, c["shortest_edge"], c["crop"], c["mean"], c["std"])
                         for im in images])
        return x.to(self.llava.device, self.llava.dtype)

    @torch.no_grad()
    def _masks(self, images: Sequence[np.ndarray], seg: list[torch.Tensor]) -> list[torch.Tensor]:
        """SAM on the full images, prompted with each image's projected states."""
        size = int(self.meta["sam"]["size"])
        inputs = [sam_ops.sam_pixels(im, size) for im in images]
        pixels = torch.stack([p for p, _ in inputs]).to(self.sam.device, self.sam.dtype)
        embeddings = self.sam.get_image_embeddings(pixels)                   # [B, C, g, g]
        out = []
        for i, (im, (_, resized)) in enumerate(zip(images, inputs)):
            low = sam_ops.prompt_masks(self.sam, embeddings[i: i + 1], seg[i])
            out.append(sam_ops.masks_to_image(low, size, resized, im.shape[:2]).cpu())
        return out

    # -- grounding ------------------------------------------------------------------------
    @torch.no_grad()
    def ground(self, images: Sequence[ImageLike], max_new_tokens: int = 512,
               answers: Sequence[str] | None = None, use_cache: bool = True,
               **generate_kwargs: Any) -> list[GroundingResult]:
        """Grounded description and masks for each image (greedy), or, with ``answers``, the
        masks of the given answers' ``[SEG]`` tokens (teacher-forced, one forward pass).

        ``use_cache=False`` decodes as GLaMM's own code does (every step re-runs the whole
        sequence); extra keyword arguments go to ``generate``.
        """
        arrays = [as_uint8(im) for im in images]
        if not arrays:
            raise ValueError("ground() needs at least one image")
        if answers is not None and len(answers) != len(arrays):
            raise ValueError(f"got {len(answers)} answers for {len(arrays)} images; give one each")
        pixels = self._pixels(arrays)
        if answers is None:
            seqs, states = self._generate(pixels, max_new_tokens, use_cache, generate_kwargs)
        else:
            seqs, states = self._teacher_forced(pixels, answers)
        prompt_len = len(self.prompt_ids())
        dtype = next(self.projection.parameters()).dtype
        seg = [self.projection(s.to(dtype)) for s in states]
        masks = self._masks(arrays, seg)
        results = []
        for seq, emb, m in zip(seqs, seg, masks):
            answer = seq[prompt_len:].tolist()
            if answer and answer[-1] == self.tokenizer.eos_id:
                answer = answer[:-1]
            parsed = read_answer(self.tokenizer.decode(answer))
            results.append(GroundingResult(parsed.text, parsed.caption, parsed.phrases, m,
                                           emb.float().cpu(), seq.cpu(), prompt_len))
        return results

    def _generate(self, pixels: torch.Tensor, max_new_tokens: int, use_cache: bool,
                  kwargs: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Greedy generation; per sample its sequence (to EOS) and the states that emitted a
        ``[SEG]`` [n, D]."""
        b = pixels.shape[0]
        ids = torch.tensor([self.prompt_ids()] * b, device=self.llava.device)
        tok = self.tokenizer
        settings = {"do_sample": False, "num_beams": 1, "eos_token_id": tok.eos_id,
                    "pad_token_id": self.meta["pad_token_id"], "suppress_tokens": [self.image_id],
                    **kwargs}
        out = self.llava.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
            max_new_tokens=max_new_tokens, use_cache=use_cache, output_hidden_states=True,
            return_dict_in_generate=True, **settings)
        new = out.sequences[:, ids.shape[1]:]                                # [B, S]
        last = torch.stack([h[-1][:, -1] for h in out.hidden_states], 1)     # [B, S, D]
        seqs, states = [], []
        for i in range(b):
            row = new[i].tolist()
            end = row.index(tok.eos_id) + 1 if tok.eos_id in row else len(row)
            is_seg = new[i, :end] == self.seg_id
            seqs.append(torch.cat([ids[i], new[i, :end]]))
            states.append(last[i, :end][is_seg])
        return seqs, states

    def _teacher_forced(self, pixels: torch.Tensor, answers: Sequence[str],
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One forward over prompt + answer (left-padded); the state before each ``[SEG]``."""
        prompt = self.prompt_ids()
        rows = [prompt + self.tokenizer.encode(a) for a in answers]
        length = max(map(len, rows))
        pad = int(self.meta["pad_token_id"])
        device = self.llava.device
        ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], device=device)
        hidden = self.llava(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                            output_hidden_states=True).hidden_states[-1]     # [B, T', D]
        shift = hidden.shape[1] - length  # pruning drops visual tokens; the answer ends the row
        seqs, states = [], []
        for i, r in enumerate(rows):
            seg = torch.nonzero(ids[i] == self.seg_id)[:, 0]                  # padded positions
            states.append(hidden[i, seg - 1 + shift])
            seqs.append(torch.tensor(r))
        return seqs, states
