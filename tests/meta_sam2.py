"""Meta's original SAM 2 (PyPI ``sam2``) for equality tests: a tiny random Hiera SAM 2.

``sam2`` is installed without its dependencies (they pull torchvision, which replaces the CPU
torch): the Makefile runs ``SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation
sam2==1.1.0``; its pure-Python imports (hydra-core, iopath) come with the ``test`` extra.
``sam2.modeling`` does not import torchvision. transformers is imported first, as for
``segment_anything`` (tests/meta_sam.py).

The tiny model has Sa2VA's SAM 2.0 flags (``projects/sa2va/hf/models_qwen2_5_vl/sam2.py``):
high-resolution features in the decoder, object-score head, MLP object-pointer projection,
``directly_add_no_mem_embed``; Hiera-L's fixed parts where they are fixed in SAM 2's code
(decoder: 2 layers, 8 heads, MLP 2048, IoU head 256 wide; mask input 16 channels).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import pytest
import torch


@dataclass(frozen=True)
class TinyHiera:
    """A Hiera small enough for CPU tests (128 px -> feature maps 32, 16, 8)."""

    embed_dim: int = 8
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 2, 1)
    global_att_blocks: tuple[int, ...] = (4,)
    window_spec: tuple[int, ...] = (4, 2, 4, 2)
    window_bkg: tuple[int, int] = (4, 4)
    image_size: int = 128
    d_model: int = 16


def import_sam2() -> Any:
    """The ``sam2.modeling`` namespace; skips the test when ``sam2`` is not installed."""
    import transformers  # noqa: F401  (see module docstring)

    if importlib.util.find_spec("sam2") is None:
        pytest.skip("sam2 is not installed (make venv installs it: see the Makefile)")
    mods = {}
    for name in ("sam2.modeling.sam2_base", "sam2.modeling.backbones.hieradet",
                 "sam2.modeling.backbones.image_encoder", "sam2.modeling.position_encoding",
                 "sam2.modeling.memory_attention", "sam2.modeling.memory_encoder",
                 "sam2.modeling.sam.transformer"):
        mods[name.rsplit(".", 1)[1]] = importlib.import_module(name)
    return mods


def tiny_meta_sam2(seed: int = 0, h: TinyHiera = TinyHiera()) -> torch.nn.Module:
    """A random ``SAM2Base`` of Meta's classes, every weight drawn (no zero init left)."""
    m = import_sam2()
    torch.manual_seed(seed)
    dims = [h.embed_dim * 2 ** i for i in range(len(h.stages))]
    trunk = m["hieradet"].Hiera(
        embed_dim=h.embed_dim, num_heads=h.num_heads, stages=h.stages,
        global_att_blocks=h.global_att_blocks, window_pos_embed_bkg_spatial_size=h.window_bkg,
        window_spec=h.window_spec)
    neck = m["image_encoder"].FpnNeck(
        position_encoding=m["position_encoding"].PositionEmbeddingSine(
            num_pos_feats=h.d_model, normalize=True, scale=None, temperature=10000),
        d_model=h.d_model, backbone_channel_list=dims[::-1], fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest")
    image_encoder = m["image_encoder"].ImageEncoder(trunk=trunk, neck=neck, scalp=1)
    grid = h.image_size // 16
    rope = m["transformer"].RoPEAttention
    layer = m["memory_attention"].MemoryAttentionLayer(
        activation="relu", dim_feedforward=32, dropout=0.0, pos_enc_at_attn=False,
        d_model=h.d_model, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=rope(rope_theta=10000.0, feat_sizes=[grid, grid], embedding_dim=h.d_model,
                            num_heads=1, downsample_rate=1, dropout=0.0),
        cross_attention=rope(rope_theta=10000.0, feat_sizes=[grid, grid], rope_k_repeat=True,
                             embedding_dim=h.d_model, num_heads=1, downsample_rate=1,
                             dropout=0.0, kv_in_dim=8))
    memory_attention = m["memory_attention"].MemoryAttention(
        d_model=h.d_model, pos_enc_at_input=True, layer=layer, num_layers=2)
    me = m["memory_encoder"]
    memory_encoder = me.MemoryEncoder(
        out_dim=8, in_dim=h.d_model,
        position_encoding=m["position_encoding"].PositionEmbeddingSine(
            num_pos_feats=8, normalize=True, scale=None, temperature=10000),
        mask_downsampler=me.MaskDownSampler(embed_dim=h.d_model, kernel_size=3, stride=2, padding=1),
        fuser=me.Fuser(me.CXBlock(dim=h.d_model, kernel_size=7, padding=3,
                                  layer_scale_init_value=1e-6, use_dwconv=True), num_layers=2))
    model = m["sam2_base"].SAM2Base(
        image_encoder=image_encoder, memory_attention=memory_attention,
        memory_encoder=memory_encoder, num_maskmem=7, image_size=h.image_size,
        sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True,
        use_high_res_features_in_sam=True, multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=False, only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True, pred_obj_scores_mlp=True, fixed_no_obj_ptr=True,
        multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98})
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = ("norm" in name or name.endswith(".gamma")) and name.endswith(("weight", "gamma"))
            p.copy_(torch.randn_like(p) * (0.05 if p.dim() > 1 else 0.1) + (1.0 if norm else 0.0))
    return model.eval()


def sa2va_masks(meta: torch.nn.Module, pixels: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Sa2VA's single-image path on Meta's model, for one image [1, 3, S, S] and prompts
    seg [n, C]: mask logits [n, S, S] at the model's input size.

    Each prompt alone, as Sa2VA's ``add_language_embd`` + ``propagate_in_video`` do: Meta's
    ``track_step`` on an initial conditioning frame without points or masks (two not-a-point
    tokens; ``no_mem_embed`` added; multimask output; best of masks 1-3 by predicted IoU), the
    language embedding appended to the sparse prompt as Sa2VA's ``_forward_sam_heads`` does,
    and object-score masking off (Sa2VA comments it out: ``pred_obj_scores`` is switched off
    on the reference for the call, which only skips that masking and the object pointer).
    """
    backbone = meta.forward_image(pixels)
    _, feats, pos, sizes = meta._prepare_backbone_features(backbone)
    encoder = meta.sam_prompt_encoder
    original = encoder.forward
    out = []
    try:
        meta.pred_obj_scores = False
        for row in seg:
            def with_language(*args: Any, row: torch.Tensor = row, **kwargs: Any) -> Any:
                sparse, dense = original(*args, **kwargs)
                return torch.cat([sparse, row.view(1, 1, -1)], dim=1), dense

            encoder.forward = with_language
            step = meta.track_step(
                frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats,
                current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None,
                mask_inputs=None, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                num_frames=1, run_mem_encoder=False)
            out.append(step["pred_masks_high_res"][0, 0])
    finally:
        encoder.forward = original
        meta.pred_obj_scores = True
    return torch.stack(out)
