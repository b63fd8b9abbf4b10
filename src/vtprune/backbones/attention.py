"""Recompute one query row of a decoder layer's attention — so SDPA never has to be switched off.

The row is rebuilt from the layer's *input* hidden states with the layer's own input norm,
q/k projections, per-head q/k norms (Qwen3-VL) and rotary embedding, exactly as the layer computes it (GQA heads repeated,
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


def project_heads(attn: Any, which: str, x: torch.Tensor, hd: int) -> torch.Tensor:
    """The layer's queries (``which="q"``) or keys (``"k"``) of ``x`` [B, n, D], before RoPE:
    [B, heads, n, hd]. A per-head RMSNorm (``self_attn.q_norm`` / ``k_norm``, Qwen3 and
    Qwen3-VL) is applied to each head's vector as the attention does, between the projection
    and the rotary embedding; norms over the whole projection (OLMo2) are refused at attach
    (:mod:`.decoder_features`)."""
    b, n, _ = x.shape
    states = getattr(attn, f"{which}_proj")(x).view(b, n, -1, hd)  # [B, n, H, hd]
    norm = getattr(attn, f"{which}_norm", None)
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


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
            ``k_proj``, ``head_dim``, ``num_key_value_groups``, ``scaling``, and optionally
            per-head ``q_norm`` / ``k_norm``, see :func:`project_heads`).
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
    q = project_heads(attn, "q", x[rows, query_index][:, None], hd)  # [B, H, 1, hd]
    k = project_heads(attn, "k", x, hd)  # [B, Hkv, T, hd]
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


def rows_attention(
    layer: Any,
    hidden_in: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    query_rows: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Attention probabilities of several query rows per sample over every key:
    [B, heads, Q, T] (fp32) — :func:`query_attention` for Q rows at once.

    Args:
        layer, hidden_in, position_embeddings, key_valid: as for :func:`query_attention`.
        query_rows: [B, Q] long, sequence index of each query row (any order; padding rows
            may point anywhere, e.g. 0, and are the caller's to ignore).

    Row q sees keys ``<= query_rows[b, q]`` that are valid (causal + padding masks); a row
    with no such key (a padding row) is all zeros instead of NaN.
    """
    attn = layer.self_attn
    b, t, _ = hidden_in.shape
    hd = int(attn.head_dim)
    rows = torch.arange(b, device=hidden_in.device)[:, None]
    x = layer.input_layernorm(hidden_in)  # [B, T, D]
    q = project_heads(attn, "q", x[rows, query_rows], hd)  # [B, H, Q, hd]
    k = project_heads(attn, "k", x, hd)  # [B, Hkv, T, hd]
    cos, sin = position_embeddings
    if cos.dim() == 4:  # M-RoPE sections left to the attention (as in query_attention)
        section = attn.config.rope_parameters["mrope_section"]
        cos, sin = mrope_sections(cos, section), mrope_sections(sin, section)
    cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)
    rope = _rope_fn(attn)
    q, _ = rope(q, q, cos[rows, query_rows], sin[rows, query_rows])
    k, _ = rope(k, k, cos, sin)
    groups = int(attn.num_key_value_groups)
    if groups > 1:  # repeat_kv: [B, Hkv, T, hd] -> [B, H, T, hd]
        k = k[:, :, None].expand(b, k.shape[1], groups, t, hd).reshape(b, -1, t, hd)
    logits = torch.matmul(q, k.transpose(2, 3)) * attn.scaling  # [B, H, Q, T]
    keys = torch.arange(t, device=hidden_in.device)
    allowed = (keys[None, None, :] <= query_rows[:, :, None]) & key_valid[:, None, :]  # [B, Q, T]
    logits = logits.float().masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)  # rows without any key: zeros


def instruction_rows(valid: torch.Tensor, is_vis: torch.Tensor, n_visual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each sample's instruction sits: its real text tokens after its last visual token.

    Args:
        valid: [B, T] bool, False on padding; is_vis: [B, T] bool, the visual tokens (every
            row holds at least ``n_visual`` of them).

    Returns ``(order [B, W], real [B, W])``, W = T - ``n_visual``: each sample's real text
    tokens after its last visual token, in sequence order, then padding rows (``real``
    False, ``order`` pointing at other tokens). No host read.
    """
    b, t = valid.shape
    pos = torch.arange(t, device=valid.device).expand(b, t)
    last_visual = torch.where(is_vis, pos, -1).amax(dim=1, keepdim=True)  # [B, 1]
    instruction = valid & ~is_vis & (pos > last_visual)  # [B, T]
    order = torch.where(instruction, pos, pos + t).argsort(dim=1)[:, : t - n_visual]  # real rows first
    return order, instruction.gather(1, order)


def instruction_attention(
    layer: Any,
    hidden_in: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor,
    is_vis: torch.Tensor,
    n_visual: int,
    flat_target: torch.Tensor,
    image_rows: int,
    cells: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``text_attention`` signal at a prune point before ``layer``: attention of each
    sample's instruction rows to its visual tokens, on the image rows' canvas.

    Args:
        layer: the decoder layer the point runs before (its own norm, q/k, RoPE are used).
        hidden_in: [B, T, D] states entering ``layer``; position_embeddings: (cos, sin) of
            the current layout, as the layer receives them.
        valid: [B, T] bool, False on padding; is_vis: [B, T] bool, visual tokens; n_visual:
            visual tokens every sample still holds (the width of ``instruction_states``).
        flat_target: [B * T] long, each sequence slot's flat place ``row * cells + cell`` on the
            canvas of ``image_rows`` image rows, ``image_rows * cells`` for non-visual slots.

    Returns ``(text_attention [M, heads, W, cells] fp32, real [B, W] bool)``: row r holds its
    sample's instruction rows (those of ``instruction_states``, same W and order; select
    ``real`` by each image row's sample for ``text_valid``); softmax over every key the row sees
    (a row sums to at most 1 over the visual tokens); zero on pruned cells and padding rows.
    """
    b, t = valid.shape
    order, real = instruction_rows(valid, is_vis, n_visual)
    probs = rows_attention(layer, hidden_in, position_embeddings, order, valid)  # [B, H, W, T]
    probs = probs * real[:, None, :, None].to(probs.dtype)
    heads, w = probs.shape[1], probs.shape[2]
    out = torch.zeros(image_rows * cells + 1, heads * w, dtype=probs.dtype, device=probs.device)
    out.index_copy_(0, flat_target, probs.permute(0, 3, 1, 2).reshape(b * t, heads * w))
    out = out[: image_rows * cells].view(image_rows, cells, heads, w)
    return out.permute(0, 2, 3, 1).contiguous(), real


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


__all__ = ["project_heads", "query_attention", "rows_attention", "instruction_rows", "instruction_attention", "cls_attention", "mrope_sections"]
