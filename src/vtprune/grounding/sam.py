"""Meta's SAM (as GLaMM stores it) on transformers' ``SamModel``: key names, config, prompting.

- :func:`meta_to_hf` / :func:`hf_to_meta` rename state-dict keys between Meta's
  ``segment_anything`` layout and ``SamModel``'s (the renames of transformers'
  ``convert_sam_to_hf.py``); MLP heads are renumbered by their depth.
- :func:`sam_config` reads every size from the tensors' shapes (embed dim, depth, heads from the
  relative-position tables, window and global-attention blocks, image and patch size, prompt
  and decoder widths). Only the mask decoder's head count (8) is not in any shape: it is fixed
  by SAM's definition, and checked for divisibility.
- :func:`sam_pixels` is SAM's preprocessing (longest side to 1024, bilinear, normalise, pad);
  :func:`prompt_masks` prompts the mask decoder with projected ``[SEG]`` states as GLaMM does
  (one sparse token each, no points, boxes or masks; single-mask output) and
  :func:`masks_to_image` turns its low-resolution logits into boolean masks at the image's size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import ConversionError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
DECODER_HEADS = 8  # SAM's TwoWayTransformer(num_heads=8): in no tensor shape
HYPERNETWORK_DEPTH = 3  # MLP(d, d, d // 8, 3) per mask token, fixed in SAM's MaskDecoder
DROPPED = ("pixel_mean", "pixel_std")  # SAM's normalisation constants, kept in sam_pixels

# (Meta prefix, transformers prefix); {a} and {b} stand for integers. First match wins.
_RULES: tuple[tuple[str, str], ...] = (
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.blocks.{a}.norm{b}.", "vision_encoder.layers.{a}.layer_norm{b}."),
    ("image_encoder.blocks.{a}.", "vision_encoder.layers.{a}."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.", "vision_encoder."),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
     "prompt_encoder.shared_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.{a}.", "prompt_encoder.point_embed.{a}."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("mask_decoder.transformer.layers.{a}.norm{b}.", "mask_decoder.transformer.layers.{a}.layer_norm{b}."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
)
SHARED_PE = "shared_image_embedding.positional_embedding"  # a copy of the prompt encoder's
_HEADS = (r"mask_decoder\.output_hypernetworks_mlps\.\d+\.", r"mask_decoder\.iou_prediction_head\.")


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{a\}", r"(?P<a>\d+)")
                      .replace(r"\{b\}", r"(?P<b>\d+)"))


_FORWARD = [(_compile(m), h) for m, h in _RULES]
_BACKWARD = [(_compile(h), m) for m, h in _RULES]


def _rewrite(key: str, rules: Sequence[tuple[re.Pattern[str], str]]) -> str:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end():]
    return key


def _head_depths(keys: Iterable[str], layer: str) -> dict[str, int]:
    """Depth of every MLP head (prefix -> number of Linear layers), given the pattern of a
    layer's name after the head prefix (Meta ``layers.N.``; transformers counts differently)."""
    depths: dict[str, int] = {}
    for key in keys:
        for head in _HEADS:
            m = re.match(f"^({head}){layer}", key)
            if m:
                depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    return depths


def meta_to_hf(keys: Iterable[str]) -> dict[str, str]:
    """Meta key -> ``SamModel`` key for every key (``pixel_mean``/``pixel_std`` excluded)."""
    keys = [k for k in keys if k not in DROPPED]
    depths = _head_depths(keys, r"layers\.(\d+)\.")
    out = {}
    for key in keys:
        for head, depth in depths.items():
            m = re.match(f"^{re.escape(head)}layers\\.(\\d+)\\.", key)
            if m:
                i = int(m.group(1))
                name = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
                out[key] = f"{head}{name}." + key[m.end():]
                break
        else:
            out[key] = _rewrite(key, _FORWARD)
    return out


def hf_to_meta(keys: Iterable[str]) -> dict[str, str]:
    """``SamModel`` key -> Meta key (the inverse of :func:`meta_to_hf`; the shared copy of the
    positional embedding, which Meta does not store, is left out)."""
    keys = [k for k in keys if k != SHARED_PE]
    inner = _head_depths(keys, r"layers\.(\d+)\.")  # depth - 2 of each head
    out = {}
    for key in keys:
        for head in _HEADS:
            m = re.match(f"^({head})(proj_in|proj_out|layers\\.(\\d+))\\.", key)
            if m:
                depth = inner.get(m.group(1), 0) + 2
                part = m.group(2)
                i = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(m.group(3)) + 1
                out[key] = f"{m.group(1)}layers.{i}." + key[m.end():]
                break
        else:
            out[key] = _rewrite(key, _BACKWARD)
    return out


def _count(shapes: Mapping[str, torch.Size], pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes for m in [re.match(pattern, k)] if m}
    if found != set(range(len(found))):
        raise ConversionError(f"SAM blocks matching {pattern!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def sam_config(shapes: Mapping[str, torch.Size]) -> dict:
    """``SamConfig`` keyword arguments from Meta-layout tensor shapes (module docstring)."""
    def shape(key: str) -> torch.Size:
        if key not in shapes:
            raise ConversionError(f"SAM checkpoint has no {key!r}: not a segment_anything SAM layout")
        return shapes[key]

    width, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = _count(shapes, r"^image_encoder\.blocks\.(\d+)\.norm1\.weight$")
    windows, global_blocks, head_dim = set(), [], 0
    for i in range(depth):
        span, head_dim = shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        size = (span + 1) // 2
        if size == grid:
            global_blocks.append(i)
        else:
            windows.add(size)
    if len(windows) > 1:
        raise ConversionError(f"SAM blocks use several window sizes {sorted(windows)}; SamModel takes one")
    if width % head_dim:
        raise ConversionError(f"SAM width {width} is not a multiple of its head size {head_dim}")
    prompt = shape("prompt_encoder.no_mask_embed.weight")[1]
    decoder = shape("mask_decoder.iou_token.weight")[1]
    inner = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    if decoder % DECODER_HEADS or inner % DECODER_HEADS:
        raise ConversionError(
            f"SAM mask decoder width {decoder} (cross-attention {inner}) is not divisible by SAM's "
            f"{DECODER_HEADS} heads: not a SAM mask decoder")
    hyper = _head_depths(shapes, r"layers\.(\d+)\.")
    if any(d != HYPERNETWORK_DEPTH for h, d in hyper.items() if "hypernetworks" in h):
        raise ConversionError(f"SAM hypernetwork MLPs must have {HYPERNETWORK_DEPTH} layers, got {hyper}")
    return {
        "vision_config": {
            "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": width // head_dim,
            "image_size": grid * patch, "patch_size": patch,
            "output_channels": shape("image_encoder.neck.0.weight")[0],
            "mlp_dim": shape("image_encoder.blocks.0.mlp.lin1.weight")[0],
            "mlp_ratio": shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / width,
            "window_size": windows.pop() if windows else 0, "global_attn_indexes": global_blocks,
            "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in shapes,
            "num_pos_feats": prompt // 2,
        },
        "prompt_encoder_config": {
            "hidden_size": prompt, "image_size": grid * patch, "patch_size": patch,
            "mask_input_channels": shape("prompt_encoder.mask_downscaling.3.weight")[0],
            "num_point_embeddings": _count(shapes, r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$"),
        },
        "mask_decoder_config": {
            "hidden_size": decoder, "num_attention_heads": DECODER_HEADS,
            "num_hidden_layers": _count(shapes, r"^mask_decoder\.transformer\.layers\.(\d+)\.norm1\.weight$"),
            "mlp_dim": shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
            "attention_downsample_rate": decoder // inner,
            "num_multimask_outputs": shape("mask_decoder.mask_tokens.weight")[0] - 1,
            "iou_head_depth": hyper.get("mask_decoder.iou_prediction_head.", 0),
            "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
        },
    }


def preprocess_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide`` target size (rounded half up)."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_pixels(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM input of one uint8 image [H, W, 3]: (pixels [3, size, size] float32, resized (h, w)).

    Longest side to ``size`` (PIL bilinear, as ``ResizeLongestSide.apply_image``), normalised
    with SAM's mean/std on 0..255, zero-padded at the bottom and right.
    """
    from PIL import Image

    h, w = preprocess_shape(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    x = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    return F.pad(x, (0, size - w, 0, size - h)), (h, w)


def prompt_masks(sam: Any, embedding: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits [n, 4g, 4g] for n ``[SEG]`` prompts seg [n, D] on one image's
    embedding [1, C, g, g]: each prompt alone, as one sparse token (GLaMM's ``text_embeds``)."""
    n = seg.shape[0]
    if n == 0:
        g = embedding.shape[-1]
        return embedding.new_zeros(0, 4 * g, 4 * g)
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
        1, -1, *embedding.shape[-2:])
    low, _ = sam.mask_decoder(
        image_embeddings=embedding, image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
        sparse_prompt_embeddings=seg.to(embedding.dtype).view(1, n, 1, -1),
        dense_prompt_embeddings=dense.to(embedding.dtype), multimask_output=False)[:2]
    return low[0, :, 0]                                               # [n, 4g, 4g]


def masks_to_image(low: torch.Tensor, size: int, resized: tuple[int, int],
                   original: tuple[int, int]) -> torch.Tensor:
    """Logits [n, h, w] -> bool [n, H, W]: upsample to the padded input, crop the image, resize
    to its own size (bilinear), threshold at 0 (SAM's ``postprocess_masks`` + ``> 0``)."""
    if low.shape[0] == 0:
        return torch.zeros(0, *original, dtype=torch.bool, device=low.device)
    x = F.interpolate(low[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    x = F.interpolate(x, original, mode="bilinear", align_corners=False)
    return x[:, 0] > 0
