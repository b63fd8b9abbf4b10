"""Convert a released GLaMM checkpoint (+ OpenAI CLIP) into transformers-native parts.

``convert_glamm(CHECKPOINT_DIR, CLIP_DIR, OUT_DIR)`` reads the checkpoint shard by shard and
writes::

    OUT_DIR/llava/                    LlavaForConditionalGeneration.from_pretrained(...)
    OUT_DIR/sam/                      SamModel.from_pretrained(...)
    OUT_DIR/seg_projection.safetensors   text_hidden_fcs: Linear(d, d), ReLU, Linear(d, 256)
    OUT_DIR/tokenizer/                GLaMM's tokenizer files, unchanged
    OUT_DIR/glamm.json                token ids, the GCG prompt, preprocessing constants

Key map (GLaMM -> transformers 5): ``model.embed_tokens`` / ``model.layers.*`` / ``model.norm``
-> ``model.language_model.*``; ``model.mm_projector.{0,2}`` ->
``model.multi_modal_projector.linear_{1,2}``; ``lm_head``; CLIP's ``vision_model.*`` ->
``model.vision_tower.*``; ``model.grounding_encoder.*`` -> SAM (:mod:`.sam`);
``model.text_hidden_fcs.0.{0,2}`` -> the projection. Dropped by name: ``model.region_encoder.*``
(unused for GCG), rotary ``inv_freq`` buffers, SAM's ``pixel_mean``/``pixel_std``, and CLIP's text
tower, projections and ``logit_scale``. GLaMM splices a ``-200`` placeholder for ``<image>``;
transformers needs an image token id, so the embedding table and ``lm_head`` get one extra
row (zero; generation suppresses it). Every size comes from the configs and tensor shapes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from . import sam as sam_keys
from .checkpoints import ConversionError, KeyLedger, iter_tensors, save_sharded
from .glamm_text import GlammTokenizer, gcg_prompt

GLAMM_TOKENS = ("<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>")
TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json", "tokenizer_config.json",
                   "special_tokens_map.json")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DROPPED_GLAMM = (r"^model\.region_encoder\.", r"\.rotary_emb\.inv_freq$")
DROPPED_CLIP = (r"^text_model\.", r"^visual_projection\.", r"^text_projection\.", r"^logit_scale$",
                r"^vision_model\.embeddings\.position_ids$")
SAM_PREFIX = "model.grounding_encoder."
SEG_PREFIX = "model.text_hidden_fcs.0."


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


def _llava_config(glamm: dict, clip: dict, shapes: dict[str, torch.Size], vocab: int) -> Any:
    """``LlavaConfig`` from GLaMM's config, CLIP's vision config and the tensors' shapes."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    for key in ("num_attention_heads", "rms_norm_eps"):
        if key not in glamm:
            raise ConversionError(f"GLaMM config.json has no {key!r}: it is in no tensor shape")
    rows, hidden = shapes["model.embed_tokens.weight"]
    layers = len({m.group(1) for k in shapes for m in [re.match(r"model\.layers\.(\d+)\.", k)] if m})
    heads = int(glamm["num_attention_heads"])
    head_dim = hidden // heads
    for key, value in (("hidden_size", hidden), ("num_hidden_layers", layers)):
        if key in glamm and int(glamm[key]) != value:
            raise ConversionError(f"GLaMM config.json says {key}={glamm[key]} but the tensors give {value}")
    text_kwargs: dict[str, Any] = dict(  # rope_theta: transformers 5 reads it into rope_parameters
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=shapes["model.layers.0.self_attn.k_proj.weight"][0] // head_dim,
        intermediate_size=shapes["model.layers.0.mlp.gate_proj.weight"][0],
        rms_norm_eps=float(glamm["rms_norm_eps"]),
        max_position_embeddings=int(glamm.get("max_position_embeddings", 4096)),
        rope_theta=float(glamm.get("rope_theta", 10000.0)), tie_word_embeddings=False,
        bos_token_id=glamm.get("bos_token_id", 1), eos_token_id=glamm.get("eos_token_id", 2),
        pad_token_id=glamm.get("pad_token_id", 0),
    )
    text = LlamaConfig(**text_kwargs)
    vision_dict = clip.get("vision_config", clip)
    vision = CLIPVisionConfig(**{k: v for k, v in vision_dict.items()
                                 if k in CLIPVisionConfig().to_dict() and k != "model_type"})
    size: Any = vision.image_size
    patch: Any = vision.patch_size
    grid = int(size) // int(patch)
    return LlavaConfig(  # type: ignore[call-arg]  # transformers 5 takes image_token_id
        vision_config=vision, text_config=text, image_token_id=rows, image_seq_length=grid * grid,
        vision_feature_layer=int(glamm.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        multimodal_projector_bias=True, tie_word_embeddings=False,
    )


def _glamm_target(key: str) -> str | None:
    """transformers key of a GLaMM LLaVA key (None: not a LLaVA key)."""
    for old, new in (("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
                     ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
                     ("model.embed_tokens.", "model.language_model.embed_tokens."),
                     ("model.layers.", "model.language_model.layers."),
                     ("model.norm.", "model.language_model.norm."),
                     ("lm_head.", "lm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _with_image_row(tensor: torch.Tensor) -> torch.Tensor:
    """[V, D] -> [V + 1, D]: a zero row for the image token id V."""
    return torch.cat([tensor, tensor.new_zeros(1, tensor.shape[1])])


def _clip_files(clip_dir: Path) -> tuple[dict, dict]:
    config = _read_json(clip_dir / "config.json")
    pre = clip_dir / "preprocessor_config.json"
    return config, json.loads(pre.read_text()) if pre.is_file() else {}


def convert_glamm(checkpoint_dir: str | Path, clip_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert (module docstring); returns ``out_dir``. Raises :class:`ConversionError` listing
    every key that is neither used nor dropped, and every target left unfilled."""
    from transformers import LlavaForConditionalGeneration, SamConfig, SamModel

    src, clip_dir, out = Path(checkpoint_dir), Path(clip_dir), Path(out_dir)
    glamm_cfg = _read_json(src / "config.json")
    clip_cfg, clip_pre = _clip_files(clip_dir)
    tokenizer = GlammTokenizer(src)
    missing = [t for t in GLAMM_TOKENS if t not in tokenizer.added]
    if missing:
        raise ConversionError(f"{src / 'added_tokens.json'} lacks GLaMM's tokens {missing}")

    # One pass over the GLaMM shards: keep LLaVA, SAM and projection tensors by kind.
    llava_src: dict[str, torch.Tensor] = {}
    sam_src: dict[str, torch.Tensor] = {}
    seg_src: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, tensor in iter_tensors(src):
        if key.startswith(SAM_PREFIX):
            sam_src[key[len(SAM_PREFIX):]] = tensor
        elif key.startswith(SEG_PREFIX):
            seg_src[key[len(SEG_PREFIX):]] = tensor
        elif any(re.search(p, key) for p in DROPPED_GLAMM):
            dropped.append(key)
        elif _glamm_target(key) is not None:
            llava_src[key] = tensor
        else:
            unknown.append(key)
    if "model.embed_tokens.weight" not in llava_src:
        raise ConversionError(f"{src} has no model.embed_tokens.weight: not a GLaMM checkpoint")

    # LLaVA: build the target on the meta device for its key names and shapes.
    shapes = {k: v.shape for k, v in llava_src.items()}
    rows = shapes["model.embed_tokens.weight"][0]
    config = _llava_config(glamm_cfg, clip_cfg, shapes, rows + 1)
    with torch.device("meta"):
        target = LlavaForConditionalGeneration(config)
    ledger = KeyLedger("GLaMM -> LlavaForConditionalGeneration",
                       {k: v.shape for k, v in target.state_dict().items()})
    for key in unknown:
        ledger.unknown(key)
    for key, tensor in llava_src.items():
        new = _glamm_target(key)
        assert new is not None
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = _with_image_row(tensor)
        ledger.put(new, tensor, key)
    nested = any(k.startswith("model.vision_tower.vision_model.") for k in ledger.expected)
    for key, tensor in iter_tensors(clip_dir):
        if any(re.search(p, key) for p in DROPPED_CLIP):
            ledger.drop(key)
        elif key.startswith("vision_model."):
            inner = key if nested else key[len("vision_model."):]
            ledger.put("model.vision_tower." + inner, tensor, f"CLIP {key}")
        else:
            ledger.unknown(f"CLIP {key}")
    llava_state = ledger.close()
    del llava_src

    # SAM
    sam_cfg = sam_keys.sam_config({k: v.shape for k, v in sam_src.items()})
    with torch.device("meta"):
        sam_target = SamModel(SamConfig(**sam_cfg))
    sam_ledger = KeyLedger("GLaMM grounding_encoder -> SamModel",
                           {k: v.shape for k, v in sam_target.state_dict().items()})
    names = sam_keys.meta_to_hf(sam_src)
    for key, tensor in sam_src.items():
        if key in sam_keys.DROPPED:
            sam_ledger.drop(SAM_PREFIX + key)
        else:
            sam_ledger.put(names[key], tensor, SAM_PREFIX + key)
    pe = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    if pe in sam_src:
        sam_ledger.put(sam_keys.SHARED_PE, sam_src[pe].clone(), SAM_PREFIX + pe)
    sam_state = sam_ledger.close()

    # [SEG] projection: Linear(d, d), ReLU, Linear(d, out)
    seg_ledger = KeyLedger("GLaMM text_hidden_fcs -> projection", {
        "0.weight": torch.Size([config.text_config.hidden_size] * 2),
        "0.bias": torch.Size([config.text_config.hidden_size]),
        "2.weight": seg_src.get("2.weight", torch.empty(0)).shape,
        "2.bias": seg_src.get("2.bias", torch.empty(0)).shape,
    })
    for key, tensor in seg_src.items():
        seg_ledger.put(key, tensor, SEG_PREFIX + key)
    seg_state = seg_ledger.close()
    if seg_state["2.weight"].shape[0] != sam_cfg["prompt_encoder_config"]["hidden_size"]:
        raise ConversionError(
            f"the [SEG] projection ends in {seg_state['2.weight'].shape[0]} channels but SAM's "
            f"prompt encoder takes {sam_cfg['prompt_encoder_config']['hidden_size']}")

    # Write.
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out / "llava")
    save_sharded(llava_state, out / "llava")
    _write_generation_config(out / "llava", config, tokenizer)
    SamConfig(**sam_cfg).save_pretrained(out / "sam")
    save_sharded(sam_state, out / "sam")
    save_file({k: v.contiguous() for k, v in seg_state.items()}, str(out / "seg_projection.safetensors"))
    (out / "tokenizer").mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / "tokenizer" / name)
    crop: Any = clip_pre.get("crop_size", config.vision_config.image_size)
    size: Any = clip_pre.get("size", config.vision_config.image_size)
    meta = {
        "model": "glamm",
        "image_token_id": rows, "num_image_tokens": config.image_seq_length,
        "tokens": {t: tokenizer.added[t] for t in GLAMM_TOKENS},
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.sp.unk_id(),
        "prompt": gcg_prompt(),
        "clip": {"shortest_edge": size["shortest_edge"] if isinstance(size, dict) else int(size),
                 "crop": crop["height"] if isinstance(crop, dict) else int(crop),
                 "mean": list(clip_pre.get("image_mean", OPENAI_MEAN)),
                 "std": list(clip_pre.get("image_std", OPENAI_STD))},
        "sam": {"size": sam_cfg["vision_config"]["image_size"],
                "mean": list(sam_keys.PIXEL_MEAN), "std": list(sam_keys.PIXEL_STD)},
        "dropped": sorted(dropped + [SAM_PREFIX + k for k in sam_src if k in sam_keys.DROPPED])[:50],
        "dropped_count": len(dropped) + len(ledger.dropped) + len(sam_ledger.dropped),
    }
    (out / "glamm.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _write_generation_config(directory: Path, config: Any, tokenizer: GlammTokenizer) -> None:
    """Greedy decoding that can never emit the image token (its lm_head row is zero)."""
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.sp.unk_id(), do_sample=False,
        suppress_tokens=[config.image_token_id],
    ).save_pretrained(directory)
