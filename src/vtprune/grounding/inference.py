"""Running the grounding stand-in: batches, losses, grounded description, masks, ablations.

Every function that takes ``visual``/``kept`` works with any subset of visual tokens, so the
same code serves the unpruned model, the validity ablations and pruned runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import text
from .model import GroundingModel
from .scenes import COLOURS, SHAPES, Scene


@dataclass
class Batch:
    """images [B, 3, H, W] in [0, 1]; tokens [B, T] = prompt + description + </s>, padded."""

    images: torch.Tensor
    tokens: torch.Tensor
    answer_start: int
    lengths: list[int]
    masks: list[torch.Tensor]  # per scene [n_i, H, W] float
    patch_labels: torch.Tensor | None = None  # [B, N] long, see ``patch_labels``


def patch_labels(scene: Scene, patch: int) -> torch.Tensor:
    """[N] label per patch: 1 + colour * n_shapes + shape of the object covering most of the
    patch (at least 10% of it), else 0."""
    n = scene.image.shape[0]
    g = n // patch
    labels = torch.zeros(g * g, dtype=torch.long)
    if len(scene.objects) == 0:
        return labels
    cover = torch.from_numpy(scene.masks.astype(np.float32))[:, None]        # [n, 1, H, W]
    frac = F.avg_pool2d(cover, patch)[:, 0].flatten(1)                       # [n, N]
    best, idx = frac.max(0)
    colours, shapes = list(COLOURS), list(SHAPES)
    cls = torch.tensor([1 + colours.index(o.colour) * len(shapes) + shapes.index(o.shape)
                        for o in scene.objects])
    return torch.where(best >= 0.1, cls[idx], labels)


def make_batch(scenes: Sequence[Scene], patch: int | None = None) -> Batch:
    """Stack scenes into model inputs (teacher-forced description targets)."""
    prompt = text.encode(list(text.PROMPT))
    seqs = [prompt + text.encode(s.description() + [text.EOS]) for s in scenes]
    t = max(len(s) for s in seqs)
    pad = text.vocab()[text.PAD]
    tokens = torch.full((len(seqs), t), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous()
    masks = [torch.from_numpy(s.masks.astype(np.float32)) for s in scenes]
    labels = torch.stack([patch_labels(s, patch) for s in scenes]) if patch else None
    return Batch(images, tokens, len(prompt), [len(s) for s in seqs], masks, labels)


def seg_positions(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, position) of every ``[SEG]`` in tokens [B, T], in reading order."""
    b, p = torch.nonzero(tokens == text.vocab()[text.SEG], as_tuple=True)
    return b, p


def losses(model: GroundingModel, batch: Batch, visual: torch.Tensor,
           kept: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Teacher-forced losses: next-word CE on the description, mask BCE + dice, coarse BCE."""
    hidden = model.lm_hidden(visual, kept, batch.tokens)               # [B, T, D]
    logits = model.logits(hidden[:, :-1])                             # predicts tokens[1:]
    target = batch.tokens[:, 1:].clone()
    target[:, : batch.answer_start - 1] = -100
    target[target == text.vocab()[text.PAD]] = -100
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                         ignore_index=-100)
    bi, pi = seg_positions(batch.tokens)
    fine, coarse = model.decoder(batch.images, hidden[bi, pi], bi)
    gt = torch.cat(batch.masks)[:, None]                              # [S, 1, H, W]
    gt_fine = F.adaptive_avg_pool2d(gt, fine.shape[-2:])[:, 0]
    gt_coarse = F.adaptive_avg_pool2d(gt, coarse.shape[-2:])[:, 0]
    bce = F.binary_cross_entropy_with_logits(fine, gt_fine)
    prob = fine.sigmoid().flatten(1)
    tgt = gt_fine.flatten(1)
    dice = (1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)).mean()
    cbce = F.binary_cross_entropy_with_logits(coarse, gt_coarse)
    out = {"lm": lm, "bce": bce, "dice": dice, "coarse": cbce,
           "total": lm + bce + dice + 0.5 * cbce}
    if batch.patch_labels is not None and kept is None:
        probe = model.token_probe(visual)                                  # [B, N, classes]
        out["probe"] = F.cross_entropy(probe.flatten(0, 1), batch.patch_labels.flatten())
        out["total"] = out["total"] + out["probe"]
    return out


def _grammar_mask(step_in_triple: int, n_done: int, max_objects: int) -> torch.Tensor:
    """Allowed next words: ``colour shape [SEG]`` repeated, then ``</s>``."""
    v = text.vocab()
    allowed = torch.zeros(len(text.WORDS), dtype=torch.bool)
    if step_in_triple == 0:
        allowed[v[text.EOS]] = True
        if n_done < max_objects:
            for c in COLOURS:
                allowed[v[c]] = True
    elif step_in_triple == 1:
        for s in SHAPES:
            allowed[v[s]] = True
    else:
        allowed[v[text.SEG]] = True
    return allowed


@torch.no_grad()
def describe(model: GroundingModel, visual: torch.Tensor, kept: torch.Tensor | None,
             max_objects: int = 8) -> list[list[str]]:
    """Greedy grounded description (grammar-constrained) for each image: word lists."""
    b = visual.shape[0]
    v = text.vocab()
    prompt = torch.tensor(text.encode(list(text.PROMPT))).expand(b, -1)
    gen = torch.empty((b, 0), dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    for step in range(3 * max_objects + 1):
        tokens = torch.cat([prompt, gen], dim=1)
        logits = model.logits(model.lm_hidden(visual, kept, tokens)[:, -1])   # [B, V]
        allowed = _grammar_mask(step % 3, step // 3, max_objects)
        nxt = logits.masked_fill(~allowed, float("-inf")).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, v[text.PAD]), nxt)
        gen = torch.cat([gen, nxt[:, None]], dim=1)
        done |= nxt == v[text.EOS]
        if bool(done.all()):
            break
    out = []
    for row in gen.tolist():
        words = text.decode(row)
        out.append(words[: words.index(text.EOS)] if text.EOS in words else words)
    return out


@torch.no_grad()
def ground(model: GroundingModel, images: torch.Tensor, visual: torch.Tensor,
           kept: torch.Tensor | None, words: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """Mask probabilities [n_i, H, W] for the ``[SEG]`` tokens of each image's ``words``."""
    prompt = text.encode(list(text.PROMPT))
    seqs = [prompt + text.encode(list(w)) for w in words]
    t = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), t), text.vocab()[text.PAD], dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    hidden = model.lm_hidden(visual, kept, tokens)
    bi, pi = seg_positions(tokens)
    h, w = images.shape[-2:]
    if len(bi) == 0:
        return [torch.zeros(0, h, w) for _ in seqs]
    fine, _ = model.decoder(images, hidden[bi, pi], bi)
    prob = F.interpolate(fine[:, None], size=(h, w), mode="bilinear",
                         align_corners=False)[:, 0].sigmoid()
    return [prob[bi == i] for i in range(len(seqs))]


# -- visual inputs for the validity checks -----------------------------------------------
def full_visual(model: GroundingModel, images: torch.Tensor) -> tuple[torch.Tensor, None]:
    """All N visual tokens."""
    return model.visual_features(images), None


def no_visual(model: GroundingModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep 0: no visual token reaches the LLM."""
    b, d = images.shape[0], model.cfg.text_hidden
    return torch.zeros(b, 0, d), torch.zeros(b, 0, dtype=torch.long)


def noise_visual(model: GroundingModel, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, None]:
    """All N tokens replaced by Gaussian noise with the real tokens' per-channel mean/std."""
    real = model.visual_features(images)                              # [B, N, D]
    mean = real.mean(dim=(0, 1), keepdim=True)
    std = real.std(dim=(0, 1), keepdim=True)
    noise = torch.randn(real.shape, generator=generator)
    return mean + std * noise, None


def oracle_kept(masks: Sequence[torch.Tensor], grid: int, image_size: int) -> list[torch.Tensor]:
    """Indices of the patches overlapping any object, per image (sorted, long)."""
    patch = image_size // grid
    out = []
    for m in masks:
        if m.shape[0] == 0:
            out.append(torch.zeros(0, dtype=torch.long))
            continue
        occ = F.max_pool2d(m.amax(0)[None, None].float(), patch)[0, 0]   # [g, g]
        out.append(torch.nonzero(occ.flatten() > 0)[:, 0])
    return out


def select_visual(visual: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Gather kept tokens: visual [B, N, D], kept [B, K] -> [B, K, D] (no mutation)."""
    return torch.gather(visual, 1, kept[..., None].expand(-1, -1, visual.shape[-1]))
