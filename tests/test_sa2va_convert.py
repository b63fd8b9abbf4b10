"""Sa2VA checkpoint conversion: strict keys, plain transformers loading, refusals that say why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vtprune.grounding import load
from vtprune.grounding.checkpoints import ConversionError, iter_tensors
from vtprune.grounding.sa2va_convert import GCG_QUESTION, MAX_PIXELS, MIN_PIXELS, convert_sa2va


def test_parts_load_with_plain_transformers_classes(tiny_sa2va_source, tiny_sa2va_dir):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Sam2Model

    qwen, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_sa2va_dir / "qwen",
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    sam2, info = Sam2Model.from_pretrained(tiny_sa2va_dir / "sam2", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    source = dict(iter_tensors(tiny_sa2va_source))
    for key, value in qwen.state_dict().items():  # the same tensors, one "model." less
        assert torch.equal(value, source["model." + key]), key
    assert torch.equal(sam2.no_memory_embedding, source["grounding_encoder.sam2_model.no_mem_embed"])
    meta = json.loads((tiny_sa2va_dir / "sa2va.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_sa2va_dir / "qwen")
    assert meta["tokens"]["[SEG]"] == tok.convert_tokens_to_ids("[SEG]")
    assert meta["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>") == qwen.config.image_token_id
    assert meta["gcg_question"] == GCG_QUESTION and "interleaved     segmentation" in GCG_QUESTION
    assert meta["refer_question"] == "\n Please segment {} in this image."
    assert any("memory_encoder" in k for k in meta["dropped"])
    pre = json.loads((tiny_sa2va_dir / "qwen" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 4 * 28 * 28, "longest_edge": 16 * 28 * 28}  # the tiny's
    assert "auto_map" not in json.loads((tiny_sa2va_dir / "qwen" / "config.json").read_text())


def test_a_released_checkpoint_gets_sa2vas_pixel_bounds(tiny_sa2va_source, tmp_path):
    """Sa2VA's code overrides preprocessor_config.json with 512..2048 tokens per image."""
    from vtprune.grounding.sa2va_convert import _pixel_bounds

    assert _pixel_bounds({}) == {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    assert (MIN_PIXELS, MAX_PIXELS) == (512 * 28 * 28, 2048 * 28 * 28)


def edit_config(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def rewrite_first_shard(directory: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    name = sorted(set(index["weight_map"].values()))[0]
    state = load_file(str(directory / name))
    edit(state)
    save_file(state, str(directory / name))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != name} | dict.fromkeys(state, name)
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def test_unknown_and_missing_keys_are_named(tiny_sa2va_source, tmp_path):
    src = edit_config(tiny_sa2va_source, tmp_path / "a", lambda c: None)
    rewrite_first_shard(src, lambda s: s.__setitem__("model.surprise.weight", torch.zeros(2)))
    with pytest.raises(ConversionError, match="model.surprise.weight"):
        convert_sa2va(src, tmp_path / "out_a")
    src = edit_config(tiny_sa2va_source, tmp_path / "b", lambda c: None)
    rewrite_first_shard(src, lambda s: s.pop("model.model.visual.patch_embed.proj.weight", None))
    with pytest.raises(ConversionError, match="model.visual.patch_embed.proj.weight"):
        convert_sa2va(src, tmp_path / "out_b")


def test_sam2_is_read_as_hiera_l_unless_told_and_contradictions_are_refused(tiny_sa2va_source, tmp_path):
    """Released checkpoints carry no SAM 2 structure: Hiera-L is assumed, and a tiny trunk
    contradicts it."""
    src = edit_config(tiny_sa2va_source, tmp_path / "src", lambda c: c.pop("vtprune_tiny"))
    with pytest.raises(ConversionError, match="Hiera-L"):
        convert_sa2va(src, tmp_path / "out")


def test_a_qwen3_vl_sa2va_is_refused_saying_why(tiny_sa2va_source, tmp_path):
    def as_qwen3(cfg):
        cfg["text_config"]["model_type"] = "qwen3_vl_text"
        cfg["vision_config"]["model_type"] = "qwen3_vl"
        cfg["architectures"] = ["Sa2VAChatModelQwen3VL"]
    src = edit_config(tiny_sa2va_source, tmp_path / "src", as_qwen3)
    with pytest.raises(ConversionError, match="conversion of this Sa2VA variant"):
        convert_sa2va(src, tmp_path / "out")


def test_a_converted_folder_of_another_family_does_not_load(tiny_sa2va_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_sa2va_dir, dst)
    meta = json.loads((dst / "sa2va.json").read_text())
    meta["qwen_family"] = "qwen3_vl"
    (dst / "sa2va.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Qwen3-VL"):
        load(dst)


def test_load_dispatches_to_sa2va(tiny_sa2va_dir):
    from vtprune.grounding.sa2va import Sa2VA

    model = load(tiny_sa2va_dir)
    assert isinstance(model, Sa2VA)
    assert model.vtprune_backbone() is model.qwen


def test_a_config_written_by_transformers_4_57_builds_the_same_model(tiny_sa2va_source, tiny_sa2va_dir, tmp_path):
    """Released configs carry rope_scaling (not rope_parameters) and top-level copies of the
    text fields; the converted model is the same."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    def as_457(cfg):
        text = cfg["text_config"]
        rope = text.pop("rope_parameters")
        text["rope_scaling"] = {"mrope_section": rope["mrope_section"], "rope_type": "default", "type": "default"}
        text["rope_theta"] = rope["rope_theta"]
        cfg.update({k: text[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "rms_norm_eps")})
        cfg["rope_scaling"], cfg["transformers_version"] = text["rope_scaling"], "4.57.1"
        cfg["vision_config"]["model_type"] = "qwen2_5_vl"
    src = edit_config(tiny_sa2va_source, tmp_path / "src", as_457)
    ours = Qwen2_5_VLForConditionalGeneration.from_pretrained(convert_sa2va(src, tmp_path / "out") / "qwen")
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_sa2va_dir / "qwen")
    assert ours.config.text_config.rope_parameters["mrope_section"] == ref.config.text_config.rope_parameters["mrope_section"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_a_chat_template_kept_beside_the_tokenizer_is_used(tiny_sa2va_dir, tmp_path):
    """Qwen2.5-VL releases may keep the template in chat_template.json (the processor's file)."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_sa2va_dir, dst)
    template = (dst / "qwen" / "chat_template.jinja").read_text()
    (dst / "qwen" / "chat_template.jinja").unlink()
    (dst / "qwen" / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    assert load(dst).tokenizer.chat_template == template
    (dst / "qwen" / "chat_template.json").unlink()
    with pytest.raises(ValueError, match="chat template"):
        load(dst)
