"""Sa2VA (Qwen2.5-VL + SAM 2) on transformers 5, loaded from a converted folder.

``Sa2VA.load(OUT_DIR)`` reads what ``vtprune convert sa2va`` wrote; ``model.ground(images)``
writes the grounded description and one mask per ``[SEG]`` (GCG), ``model.refer(images,
expressions)`` segments referring expressions. ``vtprune.attach(model, ...)`` prunes the
Qwen2.5-VL part (``model.qwen``, a plain ``Qwen2_5_VLForConditionalGeneration``); SAM 2 always
encodes the full image.

Inputs as Sa2VA's ``predict_forward`` builds them: one user turn (the image, then the question
with ``<image>`` removed) in the tokenizer's chat template with its default system turn; the
image resized as ``qwen_vl_utils.fetch_image`` does (sides rounded to multiples of 28 within
4..16384 tokens, PIL's default bicubic), then by the image processor within Sa2VA's pixel
bounds (512..2048 tokens).

Which state feeds SAM 2: the ``[SEG]`` token's **own** last-layer state (Sa2VA's
``get_seg_hidden_states``). In cached generation that is the last position's state of the step
*after* the one that emitted the ``[SEG]`` (the step that reads it); a ``[SEG]`` that is the
last generated token has none and gets no mask, as in Sa2VA. Teacher-forced answers
(``answers=[...]``) are left-padded: the state at each ``[SEG]``'s own position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import sam2 as sam2_ops
from .glamm import GroundingResult, ImageLike, as_uint8, load_projection
from .glamm_text import read_answer

FETCH_MIN_PIXELS, FETCH_MAX_PIXELS = 4 * 28 * 28, 16384 * 28 * 28  # qwen_vl_utils' defaults


def fetch_resize(image: np.ndarray) -> np.ndarray:
    """``qwen_vl_utils.fetch_image``'s resize: sides to multiples of 28 (rounded) within its
    default pixel bounds, PIL's default resample (bicubic); the identity when already there."""
    from PIL import Image

    try:  # where transformers keeps it: the PIL module in late 5.x, the processor's in 5.0
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = image.shape[:2]
    nh, nw = smart_resize(h, w, factor=28, min_pixels=FETCH_MIN_PIXELS, max_pixels=FETCH_MAX_PIXELS)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC))



def qwen_image_processor_class() -> Any:
    """transformers' PIL-based Qwen2-VL image processor (what Sa2VA's transformers 4.5x ran):
    ``Qwen2VLImageProcessorPil`` where the default class is torchvision-backed (transformers
    5.x late releases), ``Qwen2VLImageProcessor`` where that one is still the PIL one (5.0)."""
    import transformers

    return getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor

class Sa2VA(nn.Module):
    """Sa2VA from a converted folder: ``qwen``, ``sam2``, ``projection``, ``tokenizer``,
    ``image_processor``, ``meta``."""

    qwen: Any  # Qwen2_5_VLForConditionalGeneration
    sam2: Any  # Sam2Model
    projection: nn.Sequential

    def __init__(self, qwen: nn.Module, sam2: nn.Module, projection: nn.Sequential,
                 tokenizer: Any, image_processor: Any, meta: dict):
        super().__init__()
        self.qwen, self.sam2, self.projection = qwen, sam2, projection
        self.tokenizer, self.image_processor, self.meta = tokenizer, image_processor, meta
        self.seg_id = int(meta["tokens"]["[SEG]"])
        self.image_id = int(meta["image_token_id"])
        self.eos_ids = [int(i) for i in meta["eos_token_ids"]]

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype | None = None,
             device: str | torch.device | None = None) -> Sa2VA:
        """Load ``vtprune convert sa2va``'s output (float32 on the CPU unless told otherwise)."""
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Sam2Model

        d = Path(directory)
        if not (d / "sa2va.json").is_file():
            raise FileNotFoundError(f"{d / 'sa2va.json'} not found: convert a checkpoint with "
                                    "`vtprune convert sa2va CHECKPOINT --out DIR` first")
        meta = json.loads((d / "sa2va.json").read_text())
        if meta.get("qwen_family") != "qwen2_5_vl":
            raise ValueError(f"{d} holds a Sa2VA on {meta.get('qwen_family')!r}; vtprune loads the "
                             "Qwen2.5-VL variants only (the Qwen3-VL variant's conversion is not "
                             "built yet)")
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(d / "qwen", **kwargs)
        sam2 = Sam2Model.from_pretrained(d / "sam2", **kwargs)
        projection = load_projection(d / "seg_projection.safetensors")
        tokenizer = AutoTokenizer.from_pretrained(d / "qwen")
        if tokenizer.chat_template is None and (d / "qwen" / "chat_template.json").is_file():
            tokenizer.chat_template = json.loads((d / "qwen" / "chat_template.json").read_text())["chat_template"]
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer in {d / 'qwen'} has no chat template (tokenizer_config.json, "
                             "chat_template.jinja or chat_template.json); copy the checkpoint's")
        image_processor = qwen_image_processor_class().from_pretrained(d / "qwen")
        model = cls(qwen, sam2, projection, tokenizer, image_processor, meta)
        if dtype is not None:
            model.projection.to(dtype)
        return model.to(device).eval() if device is not None else model.eval()

    def vtprune_backbone(self) -> nn.Module:
        """The model ``vtprune.attach`` prunes: the Qwen2.5-VL part."""
        return self.qwen

    # -- inputs ---------------------------------------------------------------------------
    def prompt_text(self, question: str) -> str:
        """The chat-template text of one image and ``question`` (one image placeholder)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def _inputs(self, images: Sequence[np.ndarray], questions: Sequence[str],
                answers: Sequence[str] | None = None,
                ) -> tuple[dict[str, torch.Tensor], list[list[int]], list[int]]:
        """Left-padded model inputs, each row's unpadded ids (prompt, then the answer) and
        each prompt's length."""
        bounds = self.meta["pixels"]
        processed = self.image_processor(
            images=[fetch_resize(im) for im in images], return_tensors="pt",
            size={"shortest_edge": bounds["min_pixels"], "longest_edge": bounds["max_pixels"]})
        grids = processed["image_grid_thw"]                                   # [B, 3]
        merge = int(self.image_processor.merge_size) ** 2
        pad_token = self.tokenizer.convert_ids_to_tokens(self.image_id)
        rows, prompt_lens = [], []
        for i, question in enumerate(questions):
            text = self.prompt_text(question).replace(pad_token, pad_token * (int(grids[i].prod()) // merge))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            prompt_lens.append(len(ids))
            if answers is not None:
                ids = ids + self.tokenizer(answers[i], add_special_tokens=False)["input_ids"]
            rows.append(list(ids))
        length = max(map(len, rows))
        pad = int(self.meta["pad_token_id"])
        device = self.qwen.device
        ids_t = torch.tensor([[pad] * (length - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], device=device)
        inputs = {"input_ids": ids_t, "attention_mask": mask,
                  "pixel_values": processed["pixel_values"].to(device, self.qwen.dtype),
                  "image_grid_thw": grids.to(device)}
        return inputs, rows, prompt_lens

    @torch.no_grad()
    def _masks(self, images: Sequence[np.ndarray], seg: list[torch.Tensor]) -> list[torch.Tensor]:
        """SAM 2 on the full images, prompted with each image's projected states."""
        size = int(self.meta["sam2"]["size"])
        pixels = torch.stack([sam2_ops.sam2_pixels(im, size) for im in images])
        embeddings = self.sam2.get_image_embeddings(pixels.to(self.sam2.device, self.sam2.dtype))
        out = []
        for i, im in enumerate(images):
            low = sam2_ops.prompt_masks(self.sam2, [e[i: i + 1] for e in embeddings], seg[i])
            out.append(sam2_ops.masks_to_image(low, size, im.shape[:2]).cpu())
        return out

    # -- grounding ------------------------------------------------------------------------
    @torch.no_grad()
    def ground(self, images: Sequence[ImageLike], max_new_tokens: int = 512,
               answers: Sequence[str] | None = None, questions: Sequence[str] | None = None,
               **generate_kwargs: Any) -> list[GroundingResult]:
        """Grounded answer and masks for each image (greedy), or, with ``answers``, the masks of
        the given answers' ``[SEG]`` tokens (teacher-forced, one forward pass).

        ``questions`` default to Sa2VA's GCG question; extra keyword arguments go to
        ``generate``. ``GroundingResult.sequence`` holds the prompt (image tokens expanded)
        and the answer, unpadded.
        """
        arrays = [as_uint8(im) for im in images]
        if not arrays:
            raise ValueError("ground() needs at least one image")
        for name, given in (("answers", answers), ("questions", questions)):
            if given is not None and len(given) != len(arrays):
                raise ValueError(f"got {len(given)} {name} for {len(arrays)} images; give one each")
        questions = list(questions) if questions is not None else [self.meta["gcg_question"]] * len(arrays)
        if answers is None:
            seqs, states, prompt_lens = self._generate(arrays, questions, max_new_tokens, generate_kwargs)
        else:
            seqs, states, prompt_lens = self._teacher_forced(arrays, questions, answers)
        dtype = next(self.projection.parameters()).dtype
        seg = [self.projection(s.to(dtype)) for s in states]
        masks = self._masks(arrays, seg)
        results = []
        for seq, n, emb, m in zip(seqs, prompt_lens, seg, masks):
            answer = [t for t in seq[n:].tolist() if t not in self.eos_ids]
            parsed = read_answer(self.tokenizer.decode(answer, skip_special_tokens=False).strip())
            results.append(GroundingResult(parsed.text, parsed.caption, parsed.phrases, m,
                                           emb.float().cpu(), seq.cpu(), n))
        return results

    def refer(self, images: Sequence[ImageLike], expressions: Sequence[str], max_new_tokens: int = 64,
              **generate_kwargs: Any) -> list[torch.Tensor]:
        """Referring segmentation as Sa2VA's RefCOCO evaluation runs it: one question per
        expression; the union of the answer's masks (bool [H, W]), empty without a ``[SEG]``."""
        questions = [self.meta["refer_question"].format(e) for e in expressions]
        results = self.ground(images, max_new_tokens=max_new_tokens, questions=questions, **generate_kwargs)
        return [r.masks.any(0) if r.masks.shape[0] else torch.zeros(r.masks.shape[1:], dtype=torch.bool)
                for r in results]

    def _generate(self, images: Sequence[np.ndarray], questions: Sequence[str], max_new_tokens: int,
                  kwargs: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """Greedy generation; per sample its sequence (to EOS), the ``[SEG]`` states [n, D]
        and its prompt length."""
        inputs, rows, prompt_lens = self._inputs(images, questions)
        settings = {"do_sample": False, "num_beams": 1, "eos_token_id": self.eos_ids,
                    "pad_token_id": self.meta["pad_token_id"], **kwargs}
        out = self.qwen.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                                 output_hidden_states=True, return_dict_in_generate=True, **settings)
        width = inputs["input_ids"].shape[1]
        new = out.sequences[:, width:]                                        # [B, S]
        # step t >= 1 reads generated token t - 1: its state is that token's own
        read = [h[-1][:, -1] for h in out.hidden_states[1:]]
        first = out.hidden_states[0][-1]                                      # [B, T', D]
        own = torch.stack(read, 1) if read else first.new_zeros(first.shape[0], 0, first.shape[-1])
        seqs, states = [], []
        for i, row in enumerate(rows):
            tokens = new[i].tolist()
            end = next((j + 1 for j, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            is_seg = new[i, : min(end, own.shape[1])] == self.seg_id             # the last token has no state
            seqs.append(torch.cat([torch.tensor(row), new[i, :end].cpu()]))
            states.append(own[i, : is_seg.shape[0]][is_seg])
        return seqs, states, prompt_lens

    def _teacher_forced(self, images: Sequence[np.ndarray], questions: Sequence[str],
                        answers: Sequence[str]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """One forward over prompt + answer (left-padded); the state at each ``[SEG]``."""
        inputs, rows, prompt_lens = self._inputs(images, questions, answers)
        hidden = self.qwen(**inputs, output_hidden_states=True).hidden_states[-1]  # [B, T', D]
        length = inputs["input_ids"].shape[1]
        shift = hidden.shape[1] - length  # pruning drops visual tokens; the answer ends the row
        states = []
        for i in range(len(rows)):
            seg = torch.nonzero(inputs["input_ids"][i] == self.seg_id)[:, 0]
            states.append(hidden[i, seg + shift])
        return [torch.tensor(r) for r in rows], states, prompt_lens
