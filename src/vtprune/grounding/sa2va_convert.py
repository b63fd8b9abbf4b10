"""Convert a released Sa2VA-Qwen2.5-VL checkpoint into transformers-native parts.

``convert_sa2va(CHECKPOINT_DIR, OUT_DIR)`` reads the checkpoint shard by shard and writes::

    OUT_DIR/qwen/                     Qwen2_5_VLForConditionalGeneration.from_pretrained(...),
                                      with the tokenizer, chat template and image processor
                                      (Sa2VA's pixel bounds: 512..2048 visual tokens per image)
    OUT_DIR/sam2/                     Sam2Model.from_pretrained(...)
    OUT_DIR/seg_projection.safetensors   text_hidden_fcs: Linear(d, d), ReLU, Linear(d, 256)
    OUT_DIR/sa2va.json                token ids, Sa2VA's prompts, preprocessing constants

Key map (Sa2VA -> transformers 5): ``model.model.visual.*`` / ``model.model.language_model.*`` /
``model.lm_head.weight`` -> the same names without the leading ``model.`` (names and shapes are
taken from a ``Qwen2_5_VLForConditionalGeneration`` built on the meta device from the
checkpoint's config); ``grounding_encoder.sam2_model.*`` -> SAM 2 (:mod:`.sam2`; the video-only
modules are dropped by name); ``text_hidden_fcs.{0,2}`` -> the projection. The config is Sa2VA's
``sa2va_chat`` one without ``auto_map``, ``template`` and ``architectures``. Sa2VA-Qwen3-VL
checkpoints are refused: vtprune prunes Qwen3-VL (adapter ``hf-qwen3-vl``), but this
converter has not been built and checked for that variant's layout and preprocessing yet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from . import sam2 as sam2_ops
from .checkpoints import ConversionError, KeyLedger, iter_tensors, save_sharded

SAM2_PREFIX = "grounding_encoder.sam2_model."
SEG_PREFIX = "text_hidden_fcs."
QWEN_PREFIX = "model."
QWEN_PARTS = ("model.visual.", "model.language_model.", "lm_head.")
SA2VA_TOKENS = ("[SEG]", "<p>", "</p>")
# Sa2VA's Sa2VAChatModelQwen.__init__: self.min_pixels / self.max_pixels, passed to the processor.
MIN_PIXELS, MAX_PIXELS = 512 * 28 * 28, 2048 * 28 * 28
DROPPED_CONFIG = ("auto_map", "template", "architectures", "model_type", "vtprune_tiny",
                  "_name_or_path", "transformers_version")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "special_tokens_map.json", "chat_template.json",
                   "chat_template.jinja")
# Sa2VA's evaluation prompts (sa2va_eval_gcg.py: a backslash continuation inside the string
# leaves five spaces; RES.py: a space after the newline). "<image>" is removed by
# predict_forward and the image put first in the user turn.
GCG_QUESTION = ("\nCould you please give me a brief description of the image? Please respond with "
                "interleaved     segmentation masks for the corresponding parts of the answer.")
REFER_QUESTION = "\n Please segment {} in this image."


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


def qwen_family(config: dict) -> str:
    """``qwen2_5_vl`` for a Sa2VA-Qwen2.5-VL config; raises for anything else, saying why."""
    text_type = str((config.get("text_config") or {}).get("model_type", ""))
    vision_type = str((config.get("vision_config") or {}).get("model_type", ""))
    names = " ".join([text_type, vision_type, *map(str, config.get("architectures", []))]).lower()
    if "qwen3" in names:
        raise ConversionError(
            "this is a Sa2VA-Qwen3-VL checkpoint: vtprune prunes Qwen3-VL models (adapter "
            "hf-qwen3-vl), but the conversion of this Sa2VA variant (its key layout, 32-px tokens "
            "and pixel bounds) is not built yet; only Sa2VA-Qwen2.5-VL (3B, 7B) converts for now "
            "(docs/sa2va.md)")
    if config.get("model_type") != "sa2va_chat" or "text_config" not in config:
        raise ConversionError(
            f"config.json is not a Sa2VA-Qwen checkpoint's (model_type {config.get('model_type')!r}, "
            "expected 'sa2va_chat' with nested text_config / vision_config); the InternVL Sa2VA "
            "variants are not supported")
    if text_type not in ("", "qwen2_5_vl_text", "qwen2_5_vl") or vision_type not in ("", "qwen2_5_vl", "qwen2_5_vl_vision"):
        raise ConversionError(f"Sa2VA's Qwen part is {text_type!r} / {vision_type!r}; only Qwen2.5-VL converts")
    return "qwen2_5_vl"


def qwen_config(config: dict) -> Any:
    """``Qwen2_5_VLConfig`` from Sa2VA's ``sa2va_chat`` config: Sa2VA's own fields dropped, and
    the top-level copies of text fields that transformers 4.5x writes beside ``text_config``
    (``rope_scaling``, ``hidden_size``, ...; transformers 5 reads them from ``text_config``)."""
    from transformers import Qwen2_5_VLConfig

    text = config.get("text_config") or {}
    mirrored = set(text) | {"rope_scaling", "rope_theta"}
    kept = {k: v for k, v in config.items()
            if k not in DROPPED_CONFIG and (k not in mirrored or k in ("tie_word_embeddings",))}
    return Qwen2_5_VLConfig(**kept)


def _sam2_structure(config: dict) -> sam2_ops.Sam2Structure:
    tiny = config.get("vtprune_tiny", {}).get("sam2_structure")
    return sam2_ops.Sam2Structure.from_dict(tiny) if tiny else sam2_ops.HIERA_L


def convert_sa2va(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert (module docstring); returns ``out_dir``. Raises :class:`ConversionError` listing
    every key that is neither used nor dropped, and every target left unfilled."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Sam2Config

    src, out = Path(checkpoint_dir), Path(out_dir)
    raw = _read_json(src / "config.json")
    qwen_family(raw)
    config = qwen_config(raw)
    with torch.device("meta"):
        target = Qwen2_5_VLForConditionalGeneration(config)
    ledger = KeyLedger("Sa2VA -> Qwen2_5_VLForConditionalGeneration",
                       {k: v.shape for k, v in target.state_dict().items()})
    del target
    sam_src: dict[str, torch.Tensor] = {}
    seg_src: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(src):
        if key.startswith(SAM2_PREFIX):
            sam_src[key[len(SAM2_PREFIX):]] = tensor
        elif key.startswith(SEG_PREFIX):
            seg_src[key[len(SEG_PREFIX):]] = tensor
        elif key.startswith(QWEN_PREFIX) and key[len(QWEN_PREFIX):].startswith(QWEN_PARTS):
            ledger.put(key[len(QWEN_PREFIX):], tensor, key)
        else:
            ledger.unknown(key)
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(config.text_config, "tie_word_embeddings", False))
    embed = "model.language_model.embed_tokens.weight"
    if tied and "lm_head.weight" not in ledger.filled and embed in ledger.filled:
        ledger.put("lm_head.weight", ledger.filled[embed], f"{QWEN_PREFIX}{embed} (tied)")
    qwen_state = ledger.close()

    sam_state, sam_cfg, sam_dropped = _convert_sam2(sam_src, _sam2_structure(raw))
    seg_state = _projection(seg_src, int(config.text_config.hidden_size),
                            int(sam_cfg["prompt_encoder_config"]["hidden_size"]))

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out / "qwen")
    save_sharded(qwen_state, out / "qwen")
    del qwen_state
    Sam2Config(**sam_cfg).save_pretrained(out / "sam2")
    save_sharded(sam_state, out / "sam2")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in seg_state.items()}, str(out / "seg_projection.safetensors"))
    tokens = _copy_processor_files(src, out / "qwen", raw)
    meta = {
        "model": "sa2va", "qwen_family": "qwen2_5_vl", "tokens": tokens,
        "image_token_id": int(config.image_token_id),
        "eos_token_ids": sorted({tokens["eos"], *_ids(getattr(config.text_config, "eos_token_id", None))}),
        "pad_token_id": tokens["pad"],
        "gcg_question": GCG_QUESTION, "refer_question": REFER_QUESTION,
        "pixels": _pixel_bounds(raw),
        "sam2": {"size": sam_cfg["prompt_encoder_config"]["image_size"],
                 "mean": list(sam2_ops.IMAGENET_MEAN), "std": list(sam2_ops.IMAGENET_STD)},
        "dropped": sorted(sam_dropped)[:50], "dropped_count": len(sam_dropped),
    }
    (out / "sa2va.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _pixel_bounds(raw: dict) -> dict[str, int]:
    tiny = raw.get("vtprune_tiny", {})
    return {"min_pixels": int(tiny.get("min_pixels", MIN_PIXELS)),
            "max_pixels": int(tiny.get("max_pixels", MAX_PIXELS))}


def _convert_sam2(src: dict[str, torch.Tensor], structure: sam2_ops.Sam2Structure,
                  ) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """SAM 2 tensors (Meta names) -> (``Sam2Model`` state, ``Sam2Config`` kwargs, dropped keys)."""
    from transformers import Sam2Config, Sam2Model

    if not src:
        raise ConversionError(f"the checkpoint has no {SAM2_PREFIX}* tensors: not a Sa2VA checkpoint")
    cfg = sam2_ops.sam2_config({k: v.shape for k, v in src.items()}, structure)
    with torch.device("meta"):
        target = Sam2Model(Sam2Config(**cfg))
    ledger = KeyLedger("Sa2VA grounding_encoder -> Sam2Model",
                       {k: v.shape for k, v in target.state_dict().items()})
    names = sam2_ops.meta_to_hf(src)
    dropped = []
    for key, tensor in src.items():
        if sam2_ops.is_video_only(key):
            ledger.drop(SAM2_PREFIX + key)
            dropped.append(SAM2_PREFIX + key)
        elif names[key] != sam2_ops.POINT_EMBED:
            ledger.put(names[key], tensor, SAM2_PREFIX + key)
    ledger.put(sam2_ops.POINT_EMBED, sam2_ops.point_embeddings(src), SAM2_PREFIX + "sam_prompt_encoder.point_embeddings.*")
    pe = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    if pe in src:
        ledger.put(sam2_ops.SHARED_PE, src[pe].clone(), SAM2_PREFIX + pe)
    return ledger.close(), cfg, dropped


def _projection(src: dict[str, torch.Tensor], hidden: int, prompt: int) -> dict[str, torch.Tensor]:
    """``text_hidden_fcs``: Linear(hidden, hidden), ReLU, Linear(hidden, prompt) (Dropout(0) at 3)."""
    ledger = KeyLedger("Sa2VA text_hidden_fcs -> projection", {
        "0.weight": torch.Size([hidden, hidden]), "0.bias": torch.Size([hidden]),
        "2.weight": torch.Size([prompt, hidden]), "2.bias": torch.Size([prompt])})
    for key, tensor in src.items():
        ledger.put(key, tensor, SEG_PREFIX + key)
    return ledger.close()


def _copy_processor_files(src: Path, dst: Path, raw: dict) -> dict[str, int]:
    """Tokenizer files as they are (``auto_map`` dropped), the image processor with Sa2VA's
    pixel bounds; returns the token ids ``sa2va.json`` records."""
    from transformers import AutoTokenizer

    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    tok_cfg = dst / "tokenizer_config.json"
    if tok_cfg.is_file():
        data = json.loads(tok_cfg.read_text())
        data.pop("auto_map", None)
        tok_cfg.write_text(json.dumps(data, indent=2) + "\n")
    pre = _read_json(src / "preprocessor_config.json") if (src / "preprocessor_config.json").is_file() else {}
    bounds = _pixel_bounds(raw)
    pre.pop("auto_map", None)
    pre.update({"image_processor_type": "Qwen2VLImageProcessor", **bounds,
                "size": {"shortest_edge": bounds["min_pixels"], "longest_edge": bounds["max_pixels"]}})
    (dst / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    tok = AutoTokenizer.from_pretrained(dst)
    ids: dict[str, Any] = {t: tok.convert_tokens_to_ids(t) for t in SA2VA_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tok.unk_token_id]
    if missing:
        raise ConversionError(f"the tokenizer in {src} lacks Sa2VA's tokens {missing}")
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise ConversionError(f"the tokenizer in {src} has no eos or pad token")
    return {**{t: int(i) for t, i in ids.items()}, "eos": int(tok.eos_token_id), "pad": int(tok.pad_token_id)}

