"""The pruned decoder loop for Llama-like language models (Llama, Vicuna, Mistral, Qwen2 text).

It replaces the language model's forward on one instance (see the LLaVA adapter) and does
what ``LlamaModel.forward`` does — embed positions, build masks, run the layers, final norm —
except that between layers it may drop visual tokens, so it owns, per *stage* (a run of layers
sharing one token layout): the kept tokens, their RoPE position ids, the attention mask, and
in ``generate`` the per-layer key layout of the KV cache.

Shapes: B samples, T tokens in the current layout, D hidden size, N visual tokens per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.budget import keep_count
from ..core.errors import ContractError
from ..core.schedule import PrunePoint
from ..core.types import PruneContext
from .attention import query_attention
from .compat import cache_kwarg, model_output
from .decoder_features import sliding_window
from .records import PruneRecord

if TYPE_CHECKING:
    from .handle import PruneHandle

STATE_ATTR = "_vtprune_state"
"""Attribute under which the decode state rides on the KV cache object of a generation."""


@dataclass
class Pending:
    """Signals of the current model call, handed over by the adapter's hooks."""

    visual: torch.Tensor | None = None  # [B, T] bool, where the image tokens are
    image: torch.Tensor | None = None  # [B, 3, H, W] pixels the vision tower saw
    cls_attention: torch.Tensor | None = None  # [B, heads, N] vision [CLS] -> patch attention


@dataclass
class Layout:
    """Token layout of one stage during prefill (all [B, T] long / bool)."""

    slots: torch.Tensor  # original sequence position of each token
    valid: torch.Tensor  # False on padding
    vis_rank: torch.Tensor  # visual index of the token, -1 for text / padding
    original_pos: torch.Tensor  # position id the unpruned model would use
    position_ids: torch.Tensor  # position id used here (original or compact)


@dataclass
class DecodeState:
    """What decode steps need to know about a pruned prefill (kept on the cache object)."""

    owner: int  # id() of the PruneHandle that filled the cache
    stage_of_layer: list[int]
    key_valid: list[torch.Tensor]  # per stage [B, K_s]: keys in that stage's cache that are real
    shift: list[torch.Tensor]  # per stage [B]: subtracted from new position ids (compact mode)
    seen: int  # tokens of the unpruned sequence so far


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] additive mask (0 where allowed, dtype min elsewhere)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _flat(index: torch.Tensor, width: int) -> torch.Tensor:
    """Per-sample indices [B, K] into rows of width ``width`` -> flat indices [B * K]."""
    offsets = torch.arange(index.shape[0], device=index.device)[:, None] * width
    return (index + offsets).reshape(-1)


def _take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k], :]`` for x [B, T, D] and index [B, K] long -> new tensor [B, K, D].

    Same values as ``x.gather(1, index[..., None].expand(B, K, D))``, as one row copy
    (``index_select`` on the flattened rows) instead of an element-wise gather.
    """
    b, t, d = x.shape
    return x.reshape(b * t, d).index_select(0, _flat(index, t)).view(b, index.shape[1], d)


def _check_finite(
    feats: torch.Tensor, valid: torch.Tensor, attention: torch.Tensor | None, layer: int | None
) -> None:
    """Refuse non-finite visual states or attention, naming the samples (one host sync).

    feats [B, N, D], valid [B, N], attention [B, H, N] or None."""
    ok = (torch.isfinite(feats).all(dim=-1) | ~valid).all(dim=1)  # [B]
    if attention is not None:
        ok &= torch.isfinite(attention).all(dim=-1).all(dim=-1)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        where = "before the LLM" if layer is None else f"before layer {layer}"
        raise ContractError(
            f"sample(s) {bad} of the batch have NaN or inf visual token states {where} (usually "
            "NaN/inf in their pixel_values); check those images — the other samples are fine"
        )


def instruction_states(
    h: torch.Tensor, layout: Layout, is_vis: torch.Tensor, n_visual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's instruction — its real text tokens after its last visual token — as
    states ``h`` [B, T, D] at the prune point: a new tensor [B, W, D], W = T - ``n_visual``
    (the visual tokens every row holds), real rows first in sequence order, padding rows
    zero; and their mask [B, W] bool. No host read."""
    b, t, _ = h.shape
    pos = torch.arange(t, device=h.device).expand(b, t)
    last_visual = torch.where(is_vis, pos, -1).amax(dim=1, keepdim=True)  # [B, 1]
    instruction = layout.valid & ~is_vis & (pos > last_visual)  # [B, T]
    order = torch.where(instruction, pos, pos + t).argsort(dim=1)[:, : t - n_visual]  # real rows first
    real = instruction.gather(1, order)
    return _take_rows(h, order) * real[..., None].to(h.dtype), real


class PrunedDecoder:
    """Callable standing in for ``language_model.forward`` while a handle is attached."""

    def __init__(self, lm: Any, handle: PruneHandle, image_token_count: int, grid: tuple[int, int]) -> None:
        self.lm = lm
        self.handle = handle
        self.n_visual = image_token_count
        self.grid = grid
        self.layers = list(lm.layers[: lm.config.num_hidden_layers])
        self.cache_kwarg = cache_kwarg(self.layers[0]) if self.layers else "past_key_values"
        self.window = sliding_window(lm.config)  # None: every layer sees the whole sequence
        self.pending: Pending | None = None

    # -- masks and positions ------------------------------------------------------------------

    def _sdpa(self) -> bool:
        return getattr(self.lm.config, "_attn_implementation", "eager") == "sdpa"

    def _prefill_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        if self._sdpa() and bool(valid.all()):
            return None  # SDPA's own causal kernel
        t = valid.shape[1]
        idx = torch.arange(t, device=valid.device)
        allowed = (idx[None, :, None] >= idx[None, None, :]) & valid[:, None, :]
        allowed = allowed | (idx[:, None] == idx[None, :])[None]  # padded rows see themselves
        return _additive(allowed, dtype)

    def _decode_mask(self, key_valid: torch.Tensor, q: int, dtype: torch.dtype) -> torch.Tensor | None:
        if self._sdpa() and q == 1 and bool(key_valid.all()):
            return None
        k = key_valid.shape[1]
        rows = torch.arange(q, device=key_valid.device)[:, None] + (k - q)
        cols = torch.arange(k, device=key_valid.device)[None, :]
        allowed = (cols <= rows)[None] & key_valid[:, None, :]
        allowed = allowed | (cols == rows)[None]
        return _additive(allowed, dtype)

    def _check_window(self, length: int) -> None:
        """Refuse a sequence longer than the model's sliding window: the loop's masks and the
        per-layer cache bookkeeping replay full causal attention only."""
        if self.window is not None and length > self.window:
            raise ContractError(
                f"this language model attends within a sliding window of {self.window} tokens "
                f"(config `sliding_window`) and the sequence has reached {length}; vtprune replays "
                "full causal attention only, which equals the model's inside the window. Keep "
                "prompt + generated tokens within the window, or detach to run unpruned"
            )

    def _rope(self, h: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.lm.rotary_emb(h, position_ids=position_ids)
        return cos, sin

    # -- entry point ----------------------------------------------------------------------------

    def __call__(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> Any:
        """``language_model.forward``'s signature; the KV cache comes as ``cache``
        (transformers >= 5.24) or ``past_key_values`` (earlier 5.x)."""
        pending, self.pending = self.pending, None
        if kwargs.get("output_attentions"):
            raise ContractError(
                "output_attentions is not available while vtprune pruning is attached (layers "
                "see different token sets); read handle.records, or detach first"
            )
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.lm.embed_tokens(input_ids)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ContractError(
                f"vtprune needs a 2-D [B, T] attention mask, got shape {tuple(attention_mask.shape)} "
                "(static / compiled caches are not supported while pruning)"
            )
        if position_ids is not None and position_ids.dim() != 2:
            raise ContractError(f"position_ids must be [B, T] or [1, T], got {tuple(position_ids.shape)}")
        cfg = self.lm.config
        use_cache = cfg.use_cache if use_cache is None else use_cache
        want_hidden = kwargs.get("output_hidden_states")
        want_hidden = bool(cfg.output_hidden_states if want_hidden is None else want_hidden)
        if cache is None:
            cache = past_key_values
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=cfg)
        filled = cache is not None and cache.get_seq_length() > 0
        if filled:
            h, hidden = self._decode(inputs_embeds, attention_mask, position_ids, cache, use_cache, want_hidden)
        else:
            h, hidden = self._prefill(
                inputs_embeds, attention_mask, position_ids, cache, use_cache, want_hidden, pending or Pending()
            )
        return model_output(h, cache, hidden)

    # -- prefill --------------------------------------------------------------------------------

    def _prefill(
        self,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Any,
        use_cache: bool,
        want_hidden: bool,
        signals: Pending,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        b, t, _ = h.shape
        self._check_window(t)
        visual = signals.visual
        dev = h.device
        valid = torch.ones(b, t, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
        if position_ids is None:
            pos = torch.arange(t, device=dev)[None].expand(b, t)
        else:
            pos = position_ids.to(dev).expand(b, t)
        if visual is None or visual.shape != (b, t):
            visual = torch.zeros(b, t, dtype=torch.bool, device=dev)
        visual = visual.to(dev)
        counts = visual.sum(dim=1)
        points: list[PrunePoint] = list(self.handle.schedule.points)
        if bool((counts == 0).all()):
            points = []  # text only: nothing to prune
        elif bool((counts != self.n_visual).any()):
            raise ContractError(
                f"every sample must hold exactly one image of {self.n_visual} visual tokens; got "
                f"{counts.tolist()} image tokens per sample (multi-image prompts are not supported yet)"
            )
        vis_rank = torch.where(visual, visual.long().cumsum(dim=1) - 1, torch.full_like(pos, -1))
        slots = torch.arange(t, device=dev)[None].expand(b, t)
        layout = Layout(slots, valid, vis_rank, pos, pos)
        records: list[PruneRecord] = []
        by_layer = {p.layer: p for p in points}
        needs_attention = "attention" in self.handle.strategy.needs
        if None in by_layer:
            h, layout = self._prune(by_layer[None], h, layout, None, signals, records, t)
        mask = self._prefill_mask(layout.valid, h.dtype)
        pe = self._rope(h, layout.position_ids)
        stage_of_layer: list[int] = []
        layouts = [layout]
        hidden: list[torch.Tensor] = []
        saved: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Layout] | None = None
        for i, layer in enumerate(self.layers):
            if i in by_layer:
                attention = None
                if needs_attention:
                    # "previous": the attention layer i-1 computed (FastV); "current": the one
                    # layer i would compute on its input before pruning (PyramidDrop's code)
                    source = i - 1 if self.handle.attention_source == "previous" else i
                    h_in, pe_in, lay_in = saved if source == i - 1 and saved is not None else (h, pe, layout)
                    query = (lay_in.valid.long() * torch.arange(lay_in.valid.shape[1], device=dev)).argmax(dim=1)
                    attention = query_attention(self.layers[source], h_in, pe_in, query, lay_in.valid)
                h, layout = self._prune(by_layer[i], h, layout, attention, signals, records, t)
                layouts.append(layout)
                mask = self._prefill_mask(layout.valid, h.dtype)
                pe = self._rope(h, layout.position_ids)
            stage_of_layer.append(len(layouts) - 1)
            if needs_attention and (i + 1) in by_layer and self.handle.attention_source == "previous":
                saved = (h, pe, layout)
            if want_hidden:
                hidden.append(h)
            out = layer(
                h,
                attention_mask=mask,
                position_ids=layout.position_ids,
                use_cache=use_cache,
                position_embeddings=pe,
                **{self.cache_kwarg: cache},
            )
            h = out[0] if isinstance(out, tuple) else out
        h = self.lm.norm(h)
        if want_hidden:
            hidden.append(h)
        self.handle._set_records(records)
        if cache is not None:
            compact = self.handle.schedule.positions == "compact"
            setattr(
                cache,
                STATE_ATTR,
                DecodeState(
                    owner=id(self.handle),
                    stage_of_layer=stage_of_layer,
                    key_valid=[lay.valid for lay in layouts],
                    shift=[
                        torch.full((b,), t - lay.slots.shape[1] if compact else 0, dtype=torch.long, device=dev)
                        for lay in layouts
                    ],
                    seen=t,
                ),
            )
        return h, tuple(hidden) if want_hidden else None

    def _prune(
        self,
        point: PrunePoint,
        h: torch.Tensor,
        layout: Layout,
        attention: torch.Tensor | None,
        signals: Pending,
        records: list[PruneRecord],
        original_len: int,
    ) -> tuple[torch.Tensor, Layout]:
        """Run the strategy at one prune point and drop the tokens it does not keep."""
        start = time.perf_counter()
        b, t, d = h.shape
        n = self.n_visual
        is_vis = layout.vis_rank >= 0  # [B, T]
        n_cur = int(is_vis.sum(dim=1)[0])
        vslots = is_vis.nonzero()[:, 1].view(b, n_cur)  # [B, n_cur] ascending per sample
        vranks = layout.vis_rank.gather(1, vslots)  # [B, n_cur]
        # Context on the ORIGINAL grid: survivors in their original slots, zeros elsewhere.
        vis_h = _take_rows(h, vslots)  # [B, n_cur, D], a new tensor
        # vis_rank is the cumulative count of visual tokens (order kept by every prune), so with
        # all n present, vranks == arange(n) and the gathered rows are already the full grid.
        if n_cur == n:
            feats = vis_h
        else:
            feats = torch.zeros(b, n, d, dtype=h.dtype, device=h.device)
            feats.view(b * n, d).index_copy_(0, _flat(vranks, n), vis_h.view(b * n_cur, d))
        valid = torch.zeros(b, n, dtype=torch.bool, device=h.device)
        valid.scatter_(1, vranks, True)
        att_full = None
        if attention is not None:  # [B, H, T] -> [B, H, N]
            heads = attention.shape[1]
            att_full = torch.zeros(b, heads, n, dtype=attention.dtype, device=attention.device)
            att_full.scatter_(
                2, vranks[:, None, :].expand(b, heads, n_cur), attention.gather(2, vslots[:, None, :].expand(b, heads, n_cur))
            )
        _check_finite(feats, valid, att_full, point.layer)
        text, text_valid = None, None
        if "text_features" in self.handle.strategy.needs:
            text, text_valid = instruction_states(h, layout, is_vis, n_cur)
        budget = torch.full((b,), keep_count(point.keep, n), dtype=torch.long)
        ctx = PruneContext(
            features=feats,
            grid=self.grid,
            budget=budget,
            valid=None if n_cur == n else valid,
            image=signals.image,
            attention=att_full,
            cls_attention=signals.cls_attention,
            text_features=text,
            layer=point.layer,
            original_count=n,
            text_valid=text_valid,
        )
        sel = self.handle.strategy(ctx)
        counts = sel.counts.cpu()
        if not bool((counts == budget).all()):
            raise ContractError(
                f"strategy {self.handle.strategy.name!r} kept {counts.tolist()} tokens per sample at "
                f"layer {point.layer}; the budget is {budget.tolist()}"
            )
        kept_vis = sel.token_mask(n)  # [B, N]
        keep = torch.where(is_vis, kept_vis.gather(1, layout.vis_rank.clamp(min=0)), torch.ones_like(is_vis))
        t_new = int(keep.sum(dim=1)[0])
        idx = keep.nonzero()[:, 1].view(b, t_new)  # [B, T'] into the current layout
        h_new = _take_rows(h, idx)
        vis_rank = layout.vis_rank.gather(1, idx)
        if sel.features is not None:  # merging strategies replace the kept tokens' states
            h_new[vis_rank >= 0] = sel.features[sel.kept_mask].to(h_new.dtype)
        slots = layout.slots.gather(1, idx)
        original_pos = layout.original_pos.gather(1, idx)
        if self.handle.schedule.positions == "compact":
            removed_before = slots - torch.arange(t_new, device=slots.device)[None]
            position_ids = original_pos - removed_before
        else:
            position_ids = original_pos
        new = Layout(slots, layout.valid.gather(1, idx), vis_rank, original_pos, position_ids)
        new_index = torch.full((b, original_len), -1, dtype=torch.long, device=slots.device)
        new_index.scatter_(1, slots, torch.arange(t_new, device=slots.device)[None].expand(b, t_new))
        records.append(
            PruneRecord(
                layer=point.layer,
                indices=sel.indices.detach().clone(),
                counts=counts.clone(),
                original_count=n,
                kept_positions=slots,
                new_index=new_index,
                position_ids=position_ids,
                seconds=time.perf_counter() - start,
            )
        )
        return h_new, new

    # -- decode ---------------------------------------------------------------------------------

    def _decode(
        self,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Any,
        use_cache: bool,
        want_hidden: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        state: DecodeState | None = getattr(cache, STATE_ATTR, None)
        if state is None or state.owner != id(self.handle):
            raise ContractError(
                "this KV cache was not filled by the attached vtprune handle; start a new "
                "generation (fresh cache) after attach()"
            )
        b, q, _ = h.shape
        dev = h.device
        self._check_window(state.seen + q)
        for i, s in enumerate(state.stage_of_layer):
            have, expect = cache.get_seq_length(i), state.key_valid[s].shape[1]
            if have != expect:
                raise ContractError(
                    f"KV cache layer {i} holds {have} keys but vtprune expects {expect}; the cache "
                    "was changed outside vtprune: cropping it, or reusing it across generations, is not "
                    "supported (beam search is: reordering keeps every layer's length). Start a new "
                    "generation with a fresh cache"
                )
        if attention_mask is not None:
            if attention_mask.shape[1] != state.seen + q:
                raise ContractError(
                    f"attention_mask covers {attention_mask.shape[1]} tokens; expected the unpruned "
                    f"length so far plus the new ones ({state.seen} + {q})"
                )
            new_valid = attention_mask[:, -q:].bool().to(dev)
        else:
            new_valid = torch.ones(b, q, dtype=torch.bool, device=dev)
        if position_ids is None:
            pos = (torch.arange(q, device=dev) + state.seen)[None].expand(b, q)
        else:
            pos = position_ids.to(dev).expand(b, q)
        stages = []
        for s, kv in enumerate(state.key_valid):
            key_valid = torch.cat([kv, new_valid], dim=1)
            stage_pos = pos - state.shift[s][:, None]
            stages.append((key_valid, self._decode_mask(key_valid, q, h.dtype), stage_pos, self._rope(h, stage_pos)))
        hidden: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            _, mask, stage_pos, pe = stages[state.stage_of_layer[i]]
            if want_hidden:
                hidden.append(h)
            out = layer(
                h,
                attention_mask=mask,
                position_ids=stage_pos,
                use_cache=use_cache,
                position_embeddings=pe,
                **{self.cache_kwarg: cache},
            )
            h = out[0] if isinstance(out, tuple) else out
        h = self.lm.norm(h)
        if want_hidden:
            hidden.append(h)
        state.key_valid = [kv for kv, _, _, _ in stages]
        state.seen += q
        return h, tuple(hidden) if want_hidden else None


__all__ = ["PrunedDecoder", "DecodeState", "Layout", "Pending", "STATE_ATTR"]
