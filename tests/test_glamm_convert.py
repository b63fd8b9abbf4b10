"""GLaMM checkpoint conversion: strict keys, plain transformers loading, GLaMM's splice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vtprune.grounding.checkpoints import ConversionError, iter_tensors
from vtprune.grounding.glamm_convert import convert_glamm


def test_parts_load_with_plain_transformers_classes(tiny_glamm_dir):
    from transformers import LlavaForConditionalGeneration, SamModel

    llava, info = LlavaForConditionalGeneration.from_pretrained(tiny_glamm_dir / "llava",
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    sam, info = SamModel.from_pretrained(tiny_glamm_dir / "sam", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    meta = json.loads((tiny_glamm_dir / "glamm.json").read_text())
    rows = llava.config.text_config.vocab_size
    assert meta["image_token_id"] == rows - 1 == llava.config.image_token_id
    assert torch.count_nonzero(llava.lm_head.weight[-1]) == 0
    assert meta["num_image_tokens"] == 16
    assert any("region_encoder" in k for k in meta["dropped"])


def glamm_splice_hidden(source: Path, clip: Path, input_ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """GLaMM's ``prepare_inputs_labels_for_multimodal`` for GCG, restated on the original
    weights: CLIP layer -2 without [CLS] -> mm_projector (Linear, GELU, Linear) -> spliced at the
    -200 placeholder into the token embeddings -> Llama -> last hidden states."""
    from transformers import CLIPConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    state = dict(iter_tensors(source))
    cfg = json.loads((source / "config.json").read_text())
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=state["model.embed_tokens.weight"].shape[0], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], rms_norm_eps=cfg["rms_norm_eps"],
        tie_word_embeddings=False)).eval()
    llama.load_state_dict({k: v for k, v in state.items()
                           if k.startswith(("model.layers", "model.embed", "model.norm", "lm_head"))
                           and "inv_freq" not in k})
    vision = CLIPVisionModel(CLIPConfig.from_pretrained(clip).vision_config).eval()
    weights = torch.load(clip / "pytorch_model.bin", weights_only=True)
    nested = any(k.startswith("vision_model.") for k in vision.state_dict())  # varies in 5.x
    vision.load_state_dict({(k if nested else k[len("vision_model."):]): v for k, v in weights.items()
                            if k.startswith("vision_model.") and not k.endswith("position_ids")})
    with torch.no_grad():
        feats = vision(pixel_values=image[None], output_hidden_states=True).hidden_states[-2][:, 1:]
        proj = F.linear(F.gelu(F.linear(feats, state["model.mm_projector.0.weight"],
                                        state["model.mm_projector.0.bias"])),
                        state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])[0]
        at = int(torch.nonzero(input_ids == -200)[0, 0])
        emb = llama.model.embed_tokens
        x = torch.cat([emb(input_ids[:at]), proj, emb(input_ids[at + 1:])])[None]
        return llama.model(inputs_embeds=x).last_hidden_state[0]


def test_converted_llava_equals_glamms_splice(tiny_glamm_source, tiny_glamm_dir):
    from vtprune.grounding.glamm import GLaMM

    model = GLaMM.load(tiny_glamm_dir)
    ids = model.prompt_ids()
    n = model.meta["num_image_tokens"]
    first = ids.index(model.image_id)
    glamm_ids = torch.tensor(ids[:first] + [-200] + ids[first + n:])
    image = np.random.RandomState(0).randint(0, 255, (60, 80, 3), dtype=np.uint8)
    pixels = model._pixels([image])
    ref = glamm_splice_hidden(*tiny_glamm_source, glamm_ids, pixels[0])
    with torch.no_grad():
        out = model.llava(input_ids=torch.tensor([ids]), pixel_values=pixels,
                          output_hidden_states=True).hidden_states[-1][0]
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


def copy_source(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_shard(directory: Path, edit) -> None:
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
    shard = directory / sorted(set(index["weight_map"].values()))[0]
    state = torch.load(shard, weights_only=True)
    edit(state)
    torch.save(state, shard)
    index["weight_map"] = {k: shard.name for k in state} | {
        k: v for k, v in index["weight_map"].items() if v != shard.name}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_unknown_source_key_is_named(tiny_glamm_source, tmp_path):
    src = copy_source(tiny_glamm_source[0], tmp_path / "src")
    rewrite_shard(src, lambda s: s.__setitem__("model.surprise.weight", torch.zeros(2)))
    with pytest.raises(ConversionError, match="model.surprise.weight"):
        convert_glamm(src, tiny_glamm_source[1], tmp_path / "out")


def test_missing_target_is_named(tiny_glamm_source, tmp_path):
    src = copy_source(tiny_glamm_source[0], tmp_path / "src")
    victim = "model.norm.weight"

    def drop(state):
        state.pop(victim, None)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    for name in set(index["weight_map"].values()):
        state = torch.load(src / name, weights_only=True)
        drop(state)
        torch.save(state, src / name)
    with pytest.raises(ConversionError, match="model.language_model.norm.weight"):
        convert_glamm(src, tiny_glamm_source[1], tmp_path / "out")


def test_config_contradicting_tensors_is_refused(tiny_glamm_source, tmp_path):
    src = copy_source(tiny_glamm_source[0], tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="num_hidden_layers"):
        convert_glamm(src, tiny_glamm_source[1], tmp_path / "out")


def test_sizes_come_from_the_checkpoint(tmp_path):
    """Nothing is fixed to 7B / ViT-H / 576: another tiny shape converts too."""
    from vtprune.grounding.glamm import GLaMM
    from vtprune.grounding.tiny_glamm import TinyGlammConfig, build_tiny_glamm

    cfg = TinyGlammConfig(hidden=48, layers=3, heads=3, clip_image=42, sam_image=32,
                          sam_patch=4, sam_depth=2, sam_window=4, prompt=32, seed=3)
    src, clip = build_tiny_glamm(tmp_path / "src", cfg, shards=3)
    model = GLaMM.load(convert_glamm(src, clip, tmp_path / "out"))
    assert model.meta["num_image_tokens"] == 9
    assert model.llava.config.text_config.num_hidden_layers == 3
    assert model.sam.config.vision_config.global_attn_indexes == [0]
    out = model.ground([np.zeros((20, 30, 3), np.uint8)], answers=["<p> x </p> [SEG]"])[0]
    assert out.masks.shape == (1, 20, 30) and out.seg_embeddings.shape == (1, 32)
