"""Recompute one query row of a decoder layer's attention — so SDPA never has to be switched off.

The row is rebuilt from the layer's *input* hidden states with the layer's own input norm,
q/k projections and rotary embedding, exactly as the layer computes it (GQA heads repeated,
scaled, causal over the query's key range, padding masked, softmax in fp32).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch


def _rotate_half_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's rotate-half RoPE, for modules that only define the multimodal form."""
    cos, sin = cos[:, None], sin[:, None]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin


def mrope_sections(freq: torch.Tensor, section: list[int]) -> torch.Tensor:
    """M-RoPE's per-axis cos or sin [3, B, T, hd] -> the [B, T, hd] its attention applies:
    the head's frequency bands taken from the temporal, height and width rows in turn
    (``mrope_section`` bands each, for both halves of the head)."""
    bands = freq.split(list(section) * 2, dim=-1)
    return torch.cat([band[i % 3] for i, band in enumerate(bands)], dim=-1)


def _rope_fn(attn: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    module = sys.modules[type(attn).__module__]
    fn = getattr(module, "apply_rotary_pos_emb", None)
    if fn is None and hasattr(module, "apply_multimodal_rotary_pos_emb"):
        return _rotate_half_rope  # M-RoPE modules of older transformers (sections applied here)
    if fn is None:
        raise TypeError(
            f"{type(attn).__name__} lives in a module without apply_rotary_pos_emb; this "
            "attention class is not Llama-like and needs its own attention recomputation"
        )
    return fn  # type: ignore[no-any-return,unused-ignore]


def query_attention(
    layer: Any,
    hidden_in: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    query_index: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Attention probabilities of one query per sample over every key: [B, heads, T] (fp32).

    Args:
        layer: a Llama-like decoder layer (``input_layernorm``, ``self_attn`` with ``q_proj``,
            ``k_proj``, ``head_dim``, ``num_key_value_groups``, ``scaling``).
        hidden_in: [B, T, D] the hidden states entering ``layer``.
        position_embeddings: (cos, sin), each [B or 1, T, head_dim], as the layer receives them
            (M-RoPE whose rotary embedding leaves the sections to the attention, as in older
            transformers releases: [3, B, T, head_dim], combined here by ``mrope_section``).
        query_index: [B] long, sequence index of each sample's query token.
        key_valid: [B, T] bool, False on padding keys.

    Keys after the query are masked (causal), so the row sums to 1 over keys ``<= query``.
    """
    attn = layer.self_attn
    b, t, _ = hidden_in.shape
    hd = int(attn.head_dim)
    rows = torch.arange(b, device=hidden_in.device)
    x = layer.input_layernorm(hidden_in)  # [B, T, D]
    q = attn.q_proj(x[rows, query_index]).view(b, 1, -1, hd).transpose(1, 2)  # [B, H, 1, hd]
    k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # [B, Hkv, T, hd]
    cos, sin = position_embeddings
    if cos.dim() == 4:
        section = attn.config.rope_parameters["mrope_section"]
        cos, sin = mrope_sections(cos, section), mrope_sections(sin, section)
    cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)
    rope = _rope_fn(attn)
    q, _ = rope(q, q, cos[rows, query_index][:, None], sin[rows, query_index][:, None])
    k, _ = rope(k, k, cos, sin)
    groups = int(attn.num_key_value_groups)
    if groups > 1:  # repeat_kv: [B, Hkv, T, hd] -> [B, H, T, hd]
        k = k[:, :, None].expand(b, k.shape[1], groups, t, hd).reshape(b, -1, t, hd)
    logits = torch.matmul(q, k.transpose(2, 3)).squeeze(2) * attn.scaling  # [B, H, T]
    keys = torch.arange(t, device=hidden_in.device)
    allowed = (keys[None, :] <= query_index[:, None]) & key_valid  # [B, T]
    logits = logits.float().masked_fill(~allowed[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)





def cls_attention(layer: Any, hidden_in: torch.Tensor) -> torch.Tensor:
    """[CLS] -> patch attention of a CLIP-like encoder layer: [B, heads, N] (fp32).

    ``layer`` has ``layer_norm1`` and ``self_attn`` (``q_proj``, ``k_proj``, ``num_heads``,
    ``head_dim``, ``scale``); ``hidden_in`` [B, 1 + N, C] is the layer's input with the class
    token first. Recomputes the class token's row exactly as the layer's attention does
    (no mask, no rotary), softmax in fp32 over all 1 + N keys, then drops the class column.
    """
    attn = layer.self_attn
    b, t, _ = hidden_in.shape
    hd = int(attn.head_dim)
    x = layer.layer_norm1(hidden_in)  # [B, 1+N, C]
    q = attn.q_proj(x[:, :1]).view(b, 1, -1, hd).transpose(1, 2)  # [B, H, 1, hd]
    k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # [B, H, 1+N, hd]
    logits = torch.matmul(q, k.transpose(2, 3)).squeeze(2) * attn.scale  # [B, H, 1+N]
    return torch.softmax(logits.float(), dim=-1)[:, :, 1:]
__all__ = ["query_attention", "cls_attention", "mrope_sections"]
