"""Meta's SAM 2 (as Sa2VA stores it) on transformers' ``Sam2Model``: key names, config, prompting.

- :func:`meta_to_hf` renames Meta's ``sam2`` state-dict keys (Sa2VA's
  ``grounding_encoder.sam2_model.*`` without the prefix) to ``Sam2Model``'s; the video-only
  modules (memory attention and encoder, object pointers, temporal encodings) are named by
  :func:`is_video_only` and dropped. Sa2VA saves the memory fuser's layer scale ``gamma`` as
  ``g_weight``; it is video-only too.
- :func:`sam2_config` reads what tensor shapes say (widths, blocks per stage, window-embedding
  sizes, FPN widths, decoder sizes) and takes the rest from a :class:`Sam2Structure`, by
  default SAM 2.0 Hiera-L as Sa2VA's code builds it; a checkpoint whose shapes contradict the
  structure is refused.
- :func:`sam2_pixels` is Sa2VA's SAM 2 input (PIL bicubic resize to a square, no aspect ratio
  kept, /255, ImageNet mean/std); :func:`prompt_masks` prompts the decoder with projected
  ``[SEG]`` states as Sa2VA does; :func:`masks_to_image` turns logits into boolean masks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import ConversionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODER_HEADS = 8  # SAM 2's TwoWayTransformer(num_heads=8), in no tensor shape
BACKBONE_STRIDE = 16  # the image embedding's stride (SAM2Base.backbone_stride)
VIDEO_ONLY = (r"^memory_attention\.", r"^memory_encoder\.", r"^maskmem_tpos_enc$",
              r"^no_mem_pos_enc$", r"^no_obj_ptr$", r"^obj_ptr_proj\.", r"^obj_ptr_tpos_proj\.",
              r"^mask_downsample\.", r"^no_obj_embed_spatial$")
SHARED_PE = "shared_image_embedding.positional_embedding"  # a copy of the prompt encoder's
POINT_EMBED = "prompt_encoder.point_embed.weight"  # Meta stores one [1, C] tensor per point type
_POINT = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_MLP = re.compile(r"^(.*(?:\.mlp|output_hypernetworks_mlps\.\d+|iou_prediction_head|"
                  r"pred_obj_score_head))\.layers\.(\d+)\.")
# (pattern, replacement), applied in order, each to what the previous ones left.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.trunk\.patch_embed\.proj\.", "image_encoder.trunk.patch_embed.projection."),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.norm(\d)\.", r"image_encoder.trunk.blocks.\1.layer_norm\2."),
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.",
     r"sam_mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.", "sam_mask_decoder.transformer.layer_norm_final_attn."),
    (r"^(sam_mask_decoder\.transformer\..*)\.out_proj\.", r"\1.o_proj."),
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "sam_mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "sam_mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "sam_mask_decoder.upscale_conv2."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
)
_COMPILED = [(re.compile(p), r) for p, r in _RENAMES]


@dataclass(frozen=True)
class Sam2Structure:
    """What SAM 2's code fixes and no tensor shape says (defaults: SAM 2.0 Hiera-L, as
    Sa2VA's ``SAM2.build_image_encoder`` builds it). ``stages`` and ``embed_dim`` are in the
    shapes too; they are here so that a checkpoint of another Hiera is refused rather than
    given Hiera-L's heads and global-attention blocks."""

    embed_dim: int = 144
    stages: tuple[int, ...] = (2, 6, 36, 4)
    num_heads: int = 2
    global_att_blocks: tuple[int, ...] = (23, 33, 43)
    window_spec: tuple[int, ...] = (8, 4, 16, 8)
    image_size: int = 1024
    fpn_top_down_levels: tuple[int, ...] = field(default=(2, 3))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Sam2Structure:
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(values) - known)
        if extra:
            raise ConversionError(f"unknown SAM 2 structure fields {extra}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


HIERA_L = Sam2Structure()


def is_video_only(key: str) -> bool:
    """Whether a Meta key belongs to the video path (memory, object pointers): dropped."""
    return any(re.search(p, key) for p in VIDEO_ONLY)


def _mlp_depths(keys: Iterable[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        m = _MLP.match(key)
        if m:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    return depths


def meta_to_hf(keys: Iterable[str]) -> dict[str, str]:
    """Meta key -> ``Sam2Model`` key, for every key that is not video-only. The per-type point
    embeddings all map to :data:`POINT_EMBED` (stack them in index order)."""
    keys = [k for k in keys if not is_video_only(k)]
    depths = _mlp_depths(keys)
    out = {}
    for key in keys:
        if _POINT.match(key):
            out[key] = POINT_EMBED
            continue
        new = key
        m = _MLP.match(new)
        if m:  # MLP(layers.0 .. layers.n-1) -> proj_in, layers.0 .. layers.n-3, proj_out
            i, depth = int(m.group(2)), depths[m.group(1)]
            name = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
            new = f"{m.group(1)}.{name}." + new[m.end():]
        for pattern, repl in _COMPILED:
            new = pattern.sub(repl, new)
        out[key] = new
    return out


# ``Sam2Model`` -> Meta, for building checkpoints in Meta's layout (tiny_sa2va); applied in order.
_BACK: tuple[tuple[str, str], ...] = (
    (r"^vision_encoder\.backbone\.patch_embed\.projection\.", "image_encoder.trunk.patch_embed.proj."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.layer_norm(\d)\.", r"image_encoder.trunk.blocks.\1.norm\2."),
    (r"^vision_encoder\.backbone\.", "image_encoder.trunk."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$",
     "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "sam_prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "sam_prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "sam_prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "sam_prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "sam_prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.", "sam_prompt_encoder."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^(mask_decoder\.transformer\..*)\.o_proj\.", r"\1.out_proj."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
)
_BACK_COMPILED = [(re.compile(p), r) for p, r in _BACK]
_HF_MLP = re.compile(r"^(.*(?:\.mlp|output_hypernetworks_mlps\.\d+|iou_prediction_head|"
                     r"pred_obj_score_head))\.(proj_in|proj_out|layers\.(\d+))\.")


def hf_to_meta(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``Sam2Model`` state dict in Meta's layout (the inverse of :func:`meta_to_hf`, point
    embeddings split per type, the shared copy of the positional embedding left out)."""
    inner: dict[str, int] = {}
    for key in state:
        m = _HF_MLP.match(key)
        if m and m.group(3) is not None:
            inner[m.group(1)] = max(inner.get(m.group(1), 0), int(m.group(3)) + 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == SHARED_PE:
            continue
        if key == POINT_EMBED:
            out.update({f"sam_prompt_encoder.point_embeddings.{i}.weight": value[i: i + 1]
                        for i in range(value.shape[0])})
            continue
        new = key
        m = _HF_MLP.match(new)
        if m:
            part = m.group(2)
            i = 0 if part == "proj_in" else inner.get(m.group(1), 0) + 1 if part == "proj_out" \
                else int(m.group(3)) + 1
            new = f"{m.group(1)}.layers.{i}." + new[m.end():]
        for pattern, repl in _BACK_COMPILED:
            new = pattern.sub(repl, new)
        out[new] = value
    return out


def point_embeddings(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Meta's ``point_embeddings.{i}.weight`` [1, C] tensors stacked to [n, C]."""
    found = sorted((int(m.group(1)), v) for k, v in state.items() for m in [_POINT.match(k)] if m)
    if [i for i, _ in found] != list(range(len(found))) or not found:
        raise ConversionError(f"SAM 2 point embeddings are not numbered 0..n-1: {[i for i, _ in found]}")
    return torch.cat([v for _, v in found])


def _shape(shapes: Mapping[str, torch.Size], key: str) -> torch.Size:
    if key not in shapes:
        raise ConversionError(f"SAM 2 checkpoint has no {key!r}: not Meta's sam2 layout")
    return shapes[key]


def _count(shapes: Mapping[str, torch.Size], pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes for m in [re.match(pattern, k)] if m}
    if found != set(range(len(found))):
        raise ConversionError(f"SAM 2 blocks matching {pattern!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def hiera_stages(shapes: Mapping[str, torch.Size]) -> tuple[list[int], list[int]]:
    """(blocks per stage, width per stage) from the trunk's shapes: a block whose ``proj``
    widens the features starts a stage."""
    depth = _count(shapes, r"^image_encoder\.trunk\.blocks\.(\d+)\.norm1\.weight$")
    stages, dims = [0], [int(_shape(shapes, "image_encoder.trunk.patch_embed.proj.weight")[0])]
    for i in range(depth):
        proj = shapes.get(f"image_encoder.trunk.blocks.{i}.proj.weight")
        if proj is not None and i > 0:
            stages.append(0)
            dims.append(int(proj[0]))
        stages[-1] += 1
    return stages, dims


def sam2_config(shapes: Mapping[str, torch.Size], structure: Sam2Structure = HIERA_L) -> dict:
    """``Sam2Config`` keyword arguments from Meta-layout shapes and the structure (module
    docstring); raises :class:`ConversionError` where they disagree."""
    s = structure
    stages, dims = hiera_stages(shapes)
    problems = []
    if tuple(stages) != tuple(s.stages) or dims[0] != s.embed_dim:
        problems.append(f"the trunk has blocks per stage {stages} and width {dims[0]}, but the "
                        f"structure is {list(s.stages)} / {s.embed_dim}")
    if len(s.window_spec) != len(stages):
        problems.append(f"{len(s.window_spec)} window sizes for {len(stages)} stages")
    window = _shape(shapes, "image_encoder.trunk.pos_embed_window")
    if int(window[-1]) != s.window_spec[0]:
        problems.append(f"pos_embed_window is {int(window[-1])} wide but the first stage's window "
                        f"is {s.window_spec[0]}")
    if any(b >= sum(stages) for b in s.global_att_blocks):
        problems.append(f"global-attention blocks {list(s.global_att_blocks)} beyond the {sum(stages)} blocks")
    heads = [s.num_heads * 2 ** i for i in range(len(stages))]
    if any(d % h for d, h in zip(dims, heads)):
        problems.append(f"widths {dims} are not multiples of the heads {heads}")
    channels = [int(_shape(shapes, f"image_encoder.neck.convs.{i}.conv.weight")[1])
                for i in range(_count(shapes, r"^image_encoder\.neck\.convs\.(\d+)\.conv\.weight$"))]
    if channels != dims[::-1]:
        problems.append(f"the FPN reads widths {channels}, the trunk gives {dims[::-1]}")
    if problems:
        raise ConversionError("SAM 2 checkpoint contradicts the SAM 2 structure it is read with ("
                              f"{s}): " + "; ".join(problems) + ". Sa2VA's SAM 2 is Hiera-L; a "
                              "checkpoint of another SAM 2 needs its own structure")
    d_model = int(_shape(shapes, "sam_prompt_encoder.no_mask_embed.weight")[1])
    inner = int(_shape(shapes, "sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0])
    if d_model % DECODER_HEADS or inner % DECODER_HEADS:
        raise ConversionError(f"SAM 2 decoder width {d_model} ({inner}) is not divisible by its {DECODER_HEADS} heads")
    mlp = int(_shape(shapes, "image_encoder.trunk.blocks.0.mlp.layers.0.weight")[0])
    depths = _mlp_depths(shapes)
    feature = [s.image_size // 4 // 2 ** i for i in range(3)]
    return {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": dims[0], "num_attention_heads": s.num_heads, "image_size": s.image_size,
                "patch_kernel_size": int(_shape(shapes, "image_encoder.trunk.patch_embed.proj.weight")[-1]),
                "patch_stride": 4, "patch_padding": 3, "query_stride": [2, 2],
                "window_positional_embedding_background_size": list(_shape(shapes, "image_encoder.trunk.pos_embed")[-2:]),
                "num_query_pool_stages": len(stages) - 1, "blocks_per_stage": stages,
                "embed_dim_per_stage": dims, "num_attention_heads_per_stage": heads,
                "window_size_per_stage": list(s.window_spec),
                "global_attention_blocks": list(s.global_att_blocks), "mlp_ratio": mlp / dims[0],
            },
            "backbone_channel_list": channels, "backbone_feature_sizes": [[f, f] for f in feature],
            "fpn_hidden_size": d_model, "fpn_top_down_levels": list(s.fpn_top_down_levels),
            "num_feature_levels": 3,
        },
        "prompt_encoder_config": {
            "hidden_size": d_model, "image_size": s.image_size, "patch_size": BACKBONE_STRIDE,
            "mask_input_channels": int(_shape(shapes, "sam_prompt_encoder.mask_downscaling.3.weight")[0]),
            "num_point_embeddings": _count(shapes, r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$"),
        },
        "mask_decoder_config": {
            "hidden_size": d_model, "num_attention_heads": DECODER_HEADS,
            "num_hidden_layers": _count(shapes, r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm1\.weight$"),
            "mlp_dim": int(_shape(shapes, "sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight")[0]),
            "attention_downsample_rate": d_model // inner,
            "num_multimask_outputs": int(_shape(shapes, "sam_mask_decoder.mask_tokens.weight")[0]) - 1,
            "iou_head_depth": depths.get("sam_mask_decoder.iou_prediction_head", 0),
            "iou_head_hidden_dim": int(_shape(shapes, "sam_mask_decoder.iou_prediction_head.layers.0.weight")[0]),
        },
    }


def sam2_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """Sa2VA's SAM 2 input [3, size, size] float32 of one uint8 image [H, W, 3]: PIL bicubic
    resize to size x size (``DirectResize``: the aspect ratio is not kept, nothing padded),
    /255, ImageNet mean/std. (Sa2VA normalises in bfloat16; this is float32.)"""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    x = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def prompt_masks(sam2: Any, embeddings: Sequence[torch.Tensor], seg: torch.Tensor) -> torch.Tensor:
    """Mask logits [n, 4g, 4g] for n ``[SEG]`` prompts seg [n, C] on one image's embeddings
    (``Sam2Model.get_image_embeddings`` of that image: [1, C_l, h_l, w_l] per level, the last
    with ``no_memory_embedding`` added, as SAM 2's image path does).

    Sa2VA's way, each prompt alone: two not-a-point tokens (no points, no box), the prompt as a
    third sparse token, no mask input; multimask output, the mask of masks 1-3 with the highest
    predicted IoU; no object-score masking (Sa2VA comments it out).
    """
    n = seg.shape[0]
    low_res = embeddings[-1]
    g = low_res.shape[-1]
    if n == 0:
        return low_res.new_zeros(0, 4 * g, 4 * g)
    points = low_res.new_zeros(1, n, 1, 2)
    labels = -torch.ones(1, n, 1, dtype=torch.int32, device=low_res.device)
    sparse, dense = sam2.prompt_encoder(input_points=points, input_labels=labels,
                                        input_boxes=None, input_masks=None)  # [1, n, 2, C]
    sparse = torch.cat([sparse, seg.to(sparse.dtype).view(1, n, 1, -1)], dim=2)  # [1, n, 3, C]
    masks, iou = sam2.mask_decoder(
        image_embeddings=low_res, image_positional_embeddings=sam2.get_image_wide_positional_embeddings(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
        high_resolution_features=list(embeddings[:-1]))[:2]          # [1, n, 3, 4g, 4g], [1, n, 3]
    best = iou[0].argmax(-1)                                           # [n]
    return masks[0, torch.arange(n, device=best.device), best]         # [n, 4g, 4g]


def masks_to_image(low: torch.Tensor, size: int, original: tuple[int, int]) -> torch.Tensor:
    """Logits [n, h, w] -> bool [n, H, W]: bilinear to size x size (SAM 2's high-resolution
    masks), bilinear to the image's own size, sigmoid > 0.5 (Sa2VA's ``predict_forward``)."""
    if low.shape[0] == 0:
        return torch.zeros(0, *original, dtype=torch.bool, device=low.device)
    x = F.interpolate(low[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, original, mode="bilinear", align_corners=False)
    return x[:, 0].sigmoid() > 0.5
