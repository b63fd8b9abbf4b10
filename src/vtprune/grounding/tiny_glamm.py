"""A tiny random GLaMM checkpoint in the released layout, and an OpenAI-CLIP-style folder.

``build_tiny_glamm(out)`` writes ``out/glamm`` (GLaMM's ``config.json``, pickled
``pytorch_model-*.bin`` shards with their index, a sentencepiece ``tokenizer.model`` trained
here, ``added_tokens.json`` and the tokenizer JSONs) and ``out/clip`` (``CLIPModel`` weights
with their ``vision_model.*`` / ``text_model.*`` keys, ``config.json``,
``preprocessor_config.json``). Random weights: the path (convert, load, ground, prune,
evaluate) runs end to end, but nothing it says means anything. Region-encoder tensors and
rotary ``inv_freq`` buffers are written too, as the released checkpoints carry them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import sam as sam_keys
from .glamm_convert import GLAMM_TOKENS, OPENAI_MEAN, OPENAI_STD
from .glamm_text import GCG_INSTRUCTION, SYSTEM

CORPUS = [
    SYSTEM, GCG_INSTRUCTION, "The provides an overview of the picture.",
    "A man in a red shirt is riding a bicycle down the street next to a parked car.",
    "Two dogs play on the grass beside a wooden fence under a blue sky with clouds.",
    "The kitchen has a white table, three chairs and a window with green curtains.",
    "USER: ASSISTANT: a person a woman the building the road a tree the water",
]


@dataclass(frozen=True)
class TinyGlammConfig:
    """Sizes of the tiny checkpoint (CLIP 28 px / 14 -> 4 visual tokens by default)."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    intermediate: int = 128
    clip_hidden: int = 32
    clip_layers: int = 3
    clip_image: int = 56
    clip_patch: int = 14
    sam_image: int = 64
    sam_patch: int = 8
    sam_width: int = 32
    sam_depth: int = 3
    sam_window: int = 2
    prompt: int = 16
    vocab: int = 300
    seed: int = 0


def _train_tokenizer(out: Path, vocab: int) -> int:
    """A byte-fallback BPE sentencepiece model (unk 0, bos 1, eos 2, as Llama's); its size."""
    import sentencepiece as spm

    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 4) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=vocab,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    corpus.unlink()
    (out / "tokenizer.vocab").unlink()
    return spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).get_piece_size()


def _randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.02 if p.dim() > 1 else 0.1
            base = 1.0 if ("norm" in name or "layernorm" in name) and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))


def build_tiny_glamm(out: str | Path, cfg: TinyGlammConfig = TinyGlammConfig(),
                     shards: int = 2) -> tuple[Path, Path]:
    """Write the two folders (module docstring); returns (checkpoint_dir, clip_dir)."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        LlamaConfig,
        LlamaForCausalLM,
        SamConfig,
        SamModel,
    )

    root = Path(out)
    glamm, clip = root / "glamm", root / "clip"
    glamm.mkdir(parents=True, exist_ok=True)
    clip.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)

    pieces = _train_tokenizer(glamm, cfg.vocab)
    added = {t: pieces + i for i, t in enumerate(GLAMM_TOKENS)}
    (glamm / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    (glamm / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}) + "\n")
    (glamm / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "model_max_length": 512, "padding_side": "right",
         "add_bos_token": True, "add_eos_token": False, "legacy": True}, indent=2) + "\n")
    rows = pieces + len(GLAMM_TOKENS)

    llama_cfg = LlamaConfig(vocab_size=rows, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                            num_key_value_heads=cfg.heads, rms_norm_eps=1e-6,
                            max_position_embeddings=512, tie_word_embeddings=False)
    llama = LlamaForCausalLM(llama_cfg)
    _randomise(llama, gen)
    state = dict(llama.state_dict())
    for i in range(cfg.layers):  # old checkpoints keep the rotary buffer
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(cfg.hidden // cfg.heads // 2)

    sam_cfg = SamConfig(
        vision_config={"hidden_size": cfg.sam_width, "num_hidden_layers": cfg.sam_depth,
                       "num_attention_heads": 2, "image_size": cfg.sam_image,
                       "patch_size": cfg.sam_patch, "window_size": cfg.sam_window,
                       "global_attn_indexes": [cfg.sam_depth - 2], "output_channels": cfg.prompt,
                       "mlp_dim": 4 * cfg.sam_width, "num_pos_feats": cfg.prompt // 2},
        prompt_encoder_config={"hidden_size": cfg.prompt, "image_size": cfg.sam_image,
                               "patch_size": cfg.sam_patch, "mask_input_channels": 8},
        mask_decoder_config={"hidden_size": cfg.prompt, "mlp_dim": 2 * cfg.prompt,
                             "num_attention_heads": sam_keys.DECODER_HEADS,
                             "iou_head_hidden_dim": cfg.prompt})
    sam = SamModel(sam_cfg)
    _randomise(sam, gen)
    with torch.no_grad():
        pos: Any = sam.vision_encoder.pos_embed
        pos.normal_(0, 0.1, generator=gen)
    sam_state = sam.state_dict()
    for hf, meta in sam_keys.hf_to_meta(sam_state).items():
        state[f"model.grounding_encoder.{meta}"] = sam_state[hf]
    state["model.grounding_encoder.pixel_mean"] = torch.tensor(sam_keys.PIXEL_MEAN).view(-1, 1, 1)
    state["model.grounding_encoder.pixel_std"] = torch.tensor(sam_keys.PIXEL_STD).view(-1, 1, 1)

    def rand(*shape: int) -> torch.Tensor:
        return 0.05 * torch.randn(shape, generator=gen)

    state |= {
        "model.mm_projector.0.weight": rand(cfg.hidden, cfg.clip_hidden),
        "model.mm_projector.0.bias": rand(cfg.hidden),
        "model.mm_projector.2.weight": rand(cfg.hidden, cfg.hidden),
        "model.mm_projector.2.bias": rand(cfg.hidden),
        "model.text_hidden_fcs.0.0.weight": rand(cfg.hidden, cfg.hidden),
        "model.text_hidden_fcs.0.0.bias": rand(cfg.hidden),
        "model.text_hidden_fcs.0.2.weight": rand(cfg.prompt, cfg.hidden),
        "model.text_hidden_fcs.0.2.bias": rand(cfg.prompt),
        "model.region_encoder.mlvl_fuse.0.weight": rand(cfg.hidden, cfg.clip_hidden),
        "model.region_encoder.roi_align.scale": rand(4),
    }
    _save_shards(state, glamm, shards)
    (glamm / "config.json").write_text(json.dumps({
        "architectures": ["GLaMMForCausalLM"], "model_type": "llava",
        "hidden_size": cfg.hidden, "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.heads, "rms_norm_eps": 1e-6, "max_position_embeddings": 512,
        "vocab_size": rows, "mm_vision_select_layer": -2, "mm_hidden_size": cfg.clip_hidden,
        "mm_use_im_start_end": True, "mm_vision_module": "openai/clip-vit-large-patch14-336",
        "out_dim": cfg.prompt, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "torch_dtype": "float32", "use_cache": False,
    }, indent=2) + "\n")

    clip_cfg = CLIPConfig(
        vision_config={"hidden_size": cfg.clip_hidden, "intermediate_size": 2 * cfg.clip_hidden,
                       "num_hidden_layers": cfg.clip_layers, "num_attention_heads": 2,
                       "image_size": cfg.clip_image, "patch_size": cfg.clip_patch,
                       "projection_dim": 16, "hidden_act": "quick_gelu"},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64, "projection_dim": 16,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        projection_dim=16)
    clip_model = CLIPModel(clip_cfg)
    _randomise(clip_model, gen)
    clip_cfg.save_pretrained(clip)
    torch.save(dict(clip_model.state_dict()), clip / "pytorch_model.bin")
    (clip / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": cfg.clip_image, "width": cfg.clip_image},
        "size": {"shortest_edge": cfg.clip_image}, "do_center_crop": True,
        "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD), "resample": 3,
        "image_processor_type": "CLIPImageProcessor"}, indent=2) + "\n")
    return glamm, clip


def _save_shards(state: dict[str, torch.Tensor], directory: Path, shards: int) -> None:
    """Pickled ``pytorch_model-0000i-of-0000n.bin`` shards and their index, as released."""
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].contiguous() for k in keys[i * per: (i + 1) * per]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
         "weight_map": weight_map}, indent=2) + "\n")
