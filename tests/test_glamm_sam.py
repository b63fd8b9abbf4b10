"""SAM converted to transformers' SamModel equals Meta's original code (PyPI segment-anything)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meta_sam import import_segment_anything, tiny_meta_sam

from vtprune.grounding import sam as S
from vtprune.grounding.checkpoints import ConversionError


def converted(meta: torch.nn.Module) -> torch.nn.Module:
    from transformers import SamConfig, SamModel

    state = meta.state_dict()
    hf = SamModel(SamConfig(**S.sam_config({k: v.shape for k, v in state.items()}))).eval()
    names = S.meta_to_hf(state)
    new = {names[k]: v for k, v in state.items() if k in names}
    new[S.SHARED_PE] = state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    hf.load_state_dict(new, strict=True)
    return hf


@pytest.mark.parametrize("global_blocks", [(1,), (0, 2)])
def test_image_embeddings_and_glamm_prompted_masks_equal_meta(global_blocks):
    meta = tiny_meta_sam(seed=len(global_blocks), global_blocks=global_blocks)
    hf = converted(meta)
    x = torch.randn(2, 3, 64, 64)
    seg = torch.randn(3, 16)
    with torch.no_grad():
        ref = meta.image_encoder(x)
        emb = hf.get_image_embeddings(x)
        assert torch.allclose(emb, ref, atol=1e-5)
        # GLaMM's prompt encoder: no points/boxes/masks, text_embeds appended as sparse tokens
        sparse, dense = meta.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = torch.cat([sparse.new_zeros(3, 0, 16), seg[:, None]], dim=1)
        low_ref, _ = meta.mask_decoder(image_embeddings=ref[1:2], image_pe=meta.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        low = S.prompt_masks(hf, emb[1:2], seg)
    assert low.shape == (3, 32, 32)
    assert torch.allclose(low, low_ref[:, 0], atol=1e-5)
    # postprocessing equals Meta's Sam.postprocess_masks + (> 0)
    resized, original = (48, 64), (75, 100)
    ref_masks = meta.postprocess_masks(low_ref, resized, original)[:, 0] > 0
    assert torch.equal(S.masks_to_image(low, 64, resized, original), ref_masks)


def test_key_names_round_trip_on_meta_layout():
    state = tiny_meta_sam().state_dict()
    forward = S.meta_to_hf(state)
    assert set(forward) == set(state) - {"pixel_mean", "pixel_std"}
    assert len(set(forward.values())) == len(forward)
    back = S.hf_to_meta(forward.values())
    assert {back[v]: k for k, v in forward.items()} == {k: k for k in forward}


def test_config_comes_from_shapes_and_contradictions_are_refused():
    state = {k: v.shape for k, v in tiny_meta_sam(depth=4, global_blocks=(1, 3)).state_dict().items()}
    cfg = S.sam_config(state)
    assert cfg["vision_config"]["global_attn_indexes"] == [1, 3]
    assert cfg["vision_config"]["window_size"] == 2
    assert cfg["vision_config"]["num_attention_heads"] == 2
    assert cfg["vision_config"]["image_size"] == 64
    bad = dict(state)
    bad["image_encoder.blocks.0.attn.rel_pos_h"] = torch.Size([5, 16])  # a third window size
    with pytest.raises(ConversionError, match="window sizes"):
        S.sam_config(bad)
    missing = {k: v for k, v in state.items() if "iou_token" not in k}
    with pytest.raises(ConversionError, match="iou_token"):
        S.sam_config(missing)


def test_resize_shape_equals_meta_and_pixels_normalise_then_pad():
    import_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide

    for h, w in [(480, 640), (333, 500), (1000, 10), (7, 7)]:
        assert S.preprocess_shape(h, w, 1024) == ResizeLongestSide.get_preprocess_shape(h, w, 1024)
    image = np.full((30, 60, 3), 200, dtype=np.uint8)
    pixels, resized = S.sam_pixels(image, 64)
    assert resized == (32, 64)
    expect = (200 - torch.tensor(S.PIXEL_MEAN)) / torch.tensor(S.PIXEL_STD)
    assert torch.allclose(pixels[:, :32].mean((1, 2)), expect, atol=1e-5)
    assert pixels[:, 32:].abs().max() == 0
