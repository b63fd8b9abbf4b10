"""A tiny random Sa2VA-Qwen2.5-VL checkpoint in the released (remote-code) layout.

``build_tiny_sa2va(out)`` writes one folder as Sa2VA's Hugging Face checkpoints are laid out:
``config.json`` (``model_type: sa2va_chat``, nested ``text_config`` / ``vision_config``,
``auto_map``, ``template``), safetensors shards with their index holding
``model.model.visual.*``, ``model.model.language_model.*``, ``model.lm_head.weight``, SAM 2 under
``grounding_encoder.sam2_model.*`` in Meta's names (video-only modules included, the memory
fuser's layer scale as ``g_weight``) and ``text_hidden_fcs.{0,2}.*``; a byte-level BPE
tokenizer trained here with Qwen's special tokens and Sa2VA's ``[SEG]``, ``<p>``, ``</p>``,
Qwen2-VL's chat template, and ``preprocessor_config.json``.

Sa2VA's code fixes SAM 2 as Hiera-L at 1024 px and the Qwen pixel bounds at 512..2048 tokens;
a tiny model cannot be either, so ``config.json`` carries a ``vtprune_tiny`` entry (the SAM 2
structure and pixel bounds) that only this builder writes and the converter reads. Random
weights: the path (convert, load, ground, prune, evaluate) runs end to end, but nothing it says
means anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import sam2 as sam2_ops
from .checkpoints import save_sharded

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")
SA2VA_TOKENS = ("[SEG]", "<p>", "</p>")
# Qwen2-VL's chat template (default system turn; images as vision_start, image_pad, vision_end).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "You are a helpful assistant.",
    "Could you please give me a brief description of the image? Please respond with interleaved "
    "segmentation masks for the corresponding parts of the answer.",
    "Please segment the man in the red shirt in this image.",
    "A man in a red shirt is riding a bicycle down the street next to a parked car.",
    "Two dogs play on the grass beside a wooden fence under a blue sky with clouds.",
    "Sure, it is [SEG]. The <p> woman </p> [SEG] holds an umbrella near <p> the building </p> [SEG].",
]


@dataclass(frozen=True)
class TinySa2VAConfig:
    """Sizes of the tiny checkpoint. Pixel bounds: 4..16 visual tokens per image."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    vision_hidden: int = 32
    vision_depth: int = 2
    sam_image: int = 128
    sam_embed: int = 8
    sam_stages: tuple[int, ...] = (1, 2, 2, 1)
    sam_global: tuple[int, ...] = (4,)
    sam_windows: tuple[int, ...] = (4, 2, 4, 2)
    prompt: int = 16
    vocab: int = 420
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16 * 28 * 28
    seed: int = 0


def train_tokenizer(out: Path, vocab: int) -> Any:
    """A byte-level BPE tokenizer with Qwen's special tokens and Sa2VA's added tokens, saved
    to ``out`` with Qwen2-VL's chat template; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(QWEN_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.add_tokens(list(SA2VA_TOKENS), special_tokens=True)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def _randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm = ("norm" in name or "layernorm" in name) and name.endswith("weight")
            p.copy_((1.0 if norm else 0.0) + (0.05 if p.dim() > 1 else 0.1) * torch.randn(p.shape, generator=gen))


def tiny_sam2(cfg: TinySa2VAConfig, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], sam2_ops.Sam2Structure]:
    """A random SAM 2 in Meta's key layout (video-only tensors included) and its structure."""
    from transformers import Sam2Config, Sam2Model

    structure = sam2_ops.Sam2Structure(
        embed_dim=cfg.sam_embed, stages=cfg.sam_stages, num_heads=1,
        global_att_blocks=cfg.sam_global, window_spec=cfg.sam_windows, image_size=cfg.sam_image)
    dims = [cfg.sam_embed * 2 ** i for i in range(len(cfg.sam_stages))]
    grid = [[cfg.sam_image // 4 // 2 ** i] * 2 for i in range(3)]
    model = Sam2Model(Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model", "hidden_size": dims[0], "num_attention_heads": 1,
                "image_size": cfg.sam_image, "blocks_per_stage": list(cfg.sam_stages),
                "embed_dim_per_stage": dims, "num_attention_heads_per_stage": [2 ** i for i in range(len(dims))],
                "window_size_per_stage": list(cfg.sam_windows),
                "global_attention_blocks": list(cfg.sam_global),
                "window_positional_embedding_background_size": [4, 4]},
            "backbone_channel_list": dims[::-1], "backbone_feature_sizes": grid,
            "fpn_hidden_size": cfg.prompt},
        prompt_encoder_config={"hidden_size": cfg.prompt, "image_size": cfg.sam_image,
                               "patch_size": sam2_ops.BACKBONE_STRIDE},
        mask_decoder_config={"hidden_size": cfg.prompt, "iou_head_hidden_dim": 256, "mlp_dim": 2048}))
    _randomise(model, gen)
    state = sam2_ops.hf_to_meta(model.state_dict())
    p, mem = cfg.prompt, 8
    for name, shape in {
        "maskmem_tpos_enc": (7, 1, 1, mem), "no_mem_pos_enc": (1, 1, p), "no_obj_ptr": (1, p),
        "mask_downsample.weight": (1, 1, 4, 4), "mask_downsample.bias": (1,),
        "obj_ptr_proj.layers.0.weight": (p, p), "obj_ptr_proj.layers.0.bias": (p,),
        "memory_attention.layers.0.self_attn.q_proj.weight": (p, p),
        "memory_attention.norm.weight": (p,),
        "memory_encoder.out_proj.weight": (mem, p, 1, 1),
        "memory_encoder.fuser.layers.0.g_weight": (p,),  # Sa2VA's name for the layer scale gamma
    }.items():
        state[name] = 0.05 * torch.randn(shape, generator=gen)
    return state, structure


def build_tiny_sa2va(out: str | Path, cfg: TinySa2VAConfig = TinySa2VAConfig(), shards: int = 2) -> Path:
    """Write the checkpoint folder (module docstring); returns it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ..models import tiny_qwen_config
    from .sa2va import qwen_image_processor_class

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = train_tokenizer(root, cfg.vocab)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS + SA2VA_TOKENS}
    text = {"vocab_size": len(tok), "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
            "intermediate_size": 2 * cfg.hidden, "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    qcfg = tiny_qwen_config("qwen2_5_vl", text=text,
                            vision={"hidden_size": cfg.vision_hidden, "depth": cfg.vision_depth,
                                    "out_hidden_size": cfg.hidden})
    qcfg.image_token_id, qcfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    qcfg.vision_start_token_id, qcfg.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    qwen = Qwen2_5_VLForConditionalGeneration(qcfg)
    _randomise(qwen, gen)
    state = {f"model.{k}": v for k, v in qwen.state_dict().items()}
    sam_state, structure = tiny_sam2(cfg, gen)
    state |= {f"grounding_encoder.sam2_model.{k}": v for k, v in sam_state.items()}
    h, p = cfg.hidden, cfg.prompt
    state |= {"text_hidden_fcs.0.weight": 0.05 * torch.randn(h, h, generator=gen),
              "text_hidden_fcs.0.bias": 0.05 * torch.randn(h, generator=gen),
              "text_hidden_fcs.2.weight": 0.2 * torch.randn(p, h, generator=gen),
              "text_hidden_fcs.2.bias": 0.05 * torch.randn(p, generator=gen)}
    save_sharded(state, root, max_shard_bytes=sum(t.numel() * 4 for t in state.values()) // shards + 1)

    config = qcfg.to_dict()
    config.update({
        "architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat", "template": "qwen_chat",
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
                     "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen"},
        "vtprune_tiny": {"sam2_structure": structure.to_dict(), "min_pixels": cfg.min_pixels,
                         "max_pixels": cfg.max_pixels},
    })
    (root / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    qwen_image_processor_class()(min_pixels=3136, max_pixels=12845056).save_pretrained(root)
    return root
