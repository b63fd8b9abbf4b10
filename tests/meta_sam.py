"""Meta's original SAM (PyPI ``segment-anything``) for equality tests, without torchvision.

``segment_anything`` imports torchvision at package import (for its automatic mask generator
and resize transform, neither used here). PyPI's torchvision does not import beside the CPU
torch build these tests run on, and where it imports transformers switches its image
processors to torchvision backends; so torchvision is stubbed for the import only, after
transformers is imported (transformers probes it with importlib, which a stub would fool).
"""

from __future__ import annotations

import importlib
import sys
import types
from functools import partial

import pytest
import torch


def import_segment_anything() -> types.ModuleType:
    """``segment_anything.modeling``; skips the test when the package is not installed."""
    import transformers  # noqa: F401  (see module docstring)

    if importlib.util.find_spec("segment_anything") is None:
        pytest.skip("segment-anything is not installed (pip install -e '.[test]')")
    names = ["torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
             "torchvision.transforms.functional"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for n in names:
            stub = types.ModuleType(n)
            stub.batched_nms = stub.box_area = stub.resize = stub.to_pil_image = None
            sys.modules[n] = stub
        return importlib.import_module("segment_anything.modeling")
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def tiny_meta_sam(seed: int = 0, image_size: int = 64, patch: int = 8, width: int = 32,
                  depth: int = 3, heads: int = 2, window: int = 2, global_blocks=(1,),
                  prompt: int = 16, mask_channels: int = 8) -> torch.nn.Module:
    """A random SAM of Meta's own classes, every weight drawn so nothing is a zero init."""
    sam = import_segment_anything()
    torch.manual_seed(seed)
    grid = image_size // patch
    model = sam.Sam(
        image_encoder=sam.ImageEncoderViT(
            img_size=image_size, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
            mlp_ratio=4, out_chans=prompt, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            rel_pos_zero_init=False, window_size=window, global_attn_indexes=tuple(global_blocks)),
        prompt_encoder=sam.PromptEncoder(embed_dim=prompt, image_embedding_size=(grid, grid),
                                         input_image_size=(image_size, image_size),
                                         mask_in_chans=mask_channels),
        mask_decoder=sam.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam.TwoWayTransformer(depth=2, embedding_dim=prompt, mlp_dim=2 * prompt,
                                              num_heads=8),
            transformer_dim=prompt, iou_head_depth=3, iou_head_hidden_dim=prompt),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.02 if p.dim() > 1 else 0.1)
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        model.image_encoder.pos_embed.normal_(0, 0.1)
    return model.eval()
