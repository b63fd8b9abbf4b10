"""SAM 2 converted to transformers' Sam2Model equals Meta's original code (PyPI sam2), prompted
the way Sa2VA prompts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meta_sam2 import TinyHiera, sa2va_masks, tiny_meta_sam2

from vtprune.grounding import sam2 as S
from vtprune.grounding.checkpoints import ConversionError


def structure(h: TinyHiera) -> S.Sam2Structure:
    return S.Sam2Structure(embed_dim=h.embed_dim, stages=h.stages, num_heads=h.num_heads,
                           global_att_blocks=h.global_att_blocks, window_spec=h.window_spec,
                           image_size=h.image_size)


def converted(meta: torch.nn.Module, h: TinyHiera) -> torch.nn.Module:
    from transformers import Sam2Config, Sam2Model

    state = meta.state_dict()
    hf = Sam2Model(Sam2Config(**S.sam2_config({k: v.shape for k, v in state.items()}, structure(h))))
    names = S.meta_to_hf(state)
    new = {names[k]: v for k, v in state.items() if k in names and names[k] != S.POINT_EMBED}
    new[S.POINT_EMBED] = S.point_embeddings(state)
    new[S.SHARED_PE] = new["prompt_encoder.shared_embedding.positional_embedding"]
    hf.load_state_dict(new, strict=True)
    return hf.eval()


@pytest.mark.parametrize("h", [TinyHiera(), TinyHiera(stages=(1, 1, 3, 1), global_att_blocks=(3, 4),
                                                      window_spec=(4, 2, 2, 2), window_bkg=(2, 3))])
def test_image_embeddings_and_sa2va_prompted_masks_equal_meta(h):
    meta = tiny_meta_sam2(seed=sum(h.stages), h=h)
    hf = converted(meta, h)
    x = torch.randn(2, 3, h.image_size, h.image_size)
    seg = torch.randn(3, h.d_model) * 3
    with torch.no_grad():
        backbone = meta.forward_image(x)
        emb = hf.get_image_embeddings(x)
        for ours, ref in zip(emb[:-1], backbone["backbone_fpn"][:-1]):
            assert torch.allclose(ours, ref, atol=1e-5)
        # the image path adds no_mem_embed to the lowest-resolution level
        assert torch.allclose(emb[-1], backbone["backbone_fpn"][-1] + meta.no_mem_embed.view(1, -1, 1, 1),
                              atol=1e-5)
        ref = sa2va_masks(meta, x[1:2], seg)                              # [3, S, S]
        low = S.prompt_masks(hf, [e[1:2] for e in emb], seg)
    assert low.shape == (3, h.image_size // 4, h.image_size // 4)
    up = torch.nn.functional.interpolate(low[:, None], (h.image_size,) * 2, mode="bilinear",
                                         align_corners=False)[:, 0]
    assert torch.allclose(up, ref, atol=1e-5)
    # then Sa2VA resizes the 1024 logits to the image and thresholds sigmoid at 0.5
    expect = torch.nn.functional.interpolate(ref[:, None], (50, 70), mode="bilinear",
                                             align_corners=False)[:, 0].sigmoid() > 0.5
    assert torch.equal(S.masks_to_image(low, h.image_size, (50, 70)), expect)


def test_video_only_keys_are_named_and_the_rest_map_one_to_one():
    state = tiny_meta_sam2().state_dict()
    names = S.meta_to_hf(state)
    dropped = {k for k in state if k not in names}
    assert all(S.is_video_only(k) for k in dropped)
    assert {k.split(".")[0] for k in dropped} >= {"memory_attention", "memory_encoder", "obj_ptr_proj",
                                                  "maskmem_tpos_enc", "no_obj_ptr", "mask_downsample"}
    assert S.is_video_only("memory_encoder.fuser.layers.0.g_weight")  # Sa2VA's name for gamma
    singles = [v for v in names.values() if v != S.POINT_EMBED]
    assert len(set(singles)) == len(singles)


def test_config_is_hiera_l_where_shapes_are_silent_and_contradictions_are_refused():
    h = TinyHiera()
    shapes = {k: v.shape for k, v in tiny_meta_sam2(h=h).state_dict().items()}
    cfg = S.sam2_config(shapes, structure(h))["vision_config"]["backbone_config"]
    assert cfg["blocks_per_stage"] == [1, 2, 2, 1] and cfg["embed_dim_per_stage"] == [8, 16, 32, 64]
    assert cfg["num_attention_heads_per_stage"] == [1, 2, 4, 8]
    with pytest.raises(ConversionError, match="Hiera-L"):  # a tiny trunk read as Hiera-L
        S.sam2_config(shapes)
    bad = structure(h)
    with pytest.raises(ConversionError, match="window"):
        S.sam2_config(shapes, S.Sam2Structure(**{**bad.to_dict(), "window_spec": (8, 4, 4, 2)}))
    with pytest.raises(ConversionError, match="global-attention"):
        S.sam2_config(shapes, S.Sam2Structure.from_dict({**bad.to_dict(), "global_att_blocks": [9]}))
    assert S.HIERA_L.stages == (2, 6, 36, 4) and S.HIERA_L.global_att_blocks == (23, 33, 43)


def test_pixels_are_a_bicubic_square_resize_then_imagenet_normalised():
    from PIL import Image

    rng = np.random.RandomState(0)
    image = rng.randint(0, 255, (30, 50, 3), dtype=np.uint8)
    pixels = S.sam2_pixels(image, 64)
    assert pixels.shape == (3, 64, 64)
    # Sa2VA's DirectResize: PIL's default resample of Image.resize (bicubic), no aspect ratio
    direct = np.asarray(Image.fromarray(image).resize((64, 64))).astype(np.float32) / 255
    expect = (torch.from_numpy(direct).permute(2, 0, 1) - torch.tensor(S.IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(S.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(pixels, expect, atol=1e-6)


def test_hf_to_meta_inverts_meta_to_hf():
    state = {k: v for k, v in tiny_meta_sam2().state_dict().items() if not S.is_video_only(k)}
    hf = converted(tiny_meta_sam2(), TinyHiera()).state_dict()
    back = S.hf_to_meta(hf)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
