"""The pruned decoder loop for Llama-like language models (Llama, Vicuna, Mistral, Qwen2 text).

It replaces the language model's forward on one instance (see the LLaVA adapter) and does
what ``LlamaModel.forward`` does — embed positions, build masks, run the layers, final norm —
except that between layers it may drop visual tokens, so it owns, per *stage* (a run of layers
sharing one token layout): the kept tokens, their RoPE position ids, the attention mask, and
in ``generate`` the per-layer key layout of the KV cache.

Shapes: B samples, T tokens in the current layout, D hidden size, R rows of position ids (1
for 1-D RoPE, 3 for M-RoPE's temporal / height / width). The images of a call are the rows of
each prune point's context (:class:`~.image_rows.ImageRows`): one per prompt for LLaVA, any
number per prompt and of any grid for Qwen2-VL, each with its own budget. Samples may keep
different numbers of tokens; a shorter sample is then padded on the left with invalid
*filler* slots (never attended to, never cached as real keys), so each sample's last real
token stays last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import ContractError
from ..core.schedule import PrunePoint
from ..core.types import PruneContext
from .attention import instruction_attention, instruction_rows, query_attention
from .compat import cache_kwarg, model_output
from .decoder_features import sliding_window
from .image_rows import ImageRows
from .records import PruneRecord

if TYPE_CHECKING:
    from .handle import PruneHandle

STATE_ATTR = "_vtprune_state"
"""Attribute under which the decode state rides on the KV cache object of a generation."""


@dataclass
class Pending:
    """Signals of the current model call, handed over by the adapter's hooks."""

    visual: torch.Tensor | None = None  # [B, T] bool, where the image tokens are
    image: torch.Tensor | None = None  # [M, 3, H, W] pixels the vision tower saw (canvas)
    cls_attention: torch.Tensor | None = None  # [M, heads, N] vision [CLS] -> patch attention
    grids: torch.Tensor | None = None  # [M, 2] long CPU, each image's token grid; None: one per sample
    image_sample: torch.Tensor | None = None  # [M] long CPU, the sample of each image


@dataclass
class Layout:
    """Token layout of one stage during prefill ([B, T] long / bool; positions [R, B, T])."""

    slots: torch.Tensor  # original sequence position of each token, -1 for fillers
    valid: torch.Tensor  # False on padding and fillers
    vis_rank: torch.Tensor  # visual rank of the token in its sample, -1 for text / padding
    original_pos: torch.Tensor  # [R, B, T] position ids the unpruned model would use
    position_ids: torch.Tensor  # [R, B, T] position ids used here (original or compact)


@dataclass
class Scoring:
    """Where a prune point's attention signals come from: a decoder layer and the states
    entering it ([B, T, D], (cos, sin)) in the point's token layout."""

    layer: Any
    hidden: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


@dataclass
class DecodeState:
    """What decode steps need to know about a pruned prefill (kept on the cache object)."""

    owner: int  # id() of the PruneHandle that filled the cache
    stage_of_layer: list[int]
    key_valid: list[torch.Tensor]  # per stage [B, K_s]: keys in that stage's cache that are real
    shift: list[torch.Tensor]  # per stage [B]: subtracted from new position ids (compact mode)
    seen: int  # tokens of the unpruned sequence so far


def _decode_shift(layout: Layout) -> torch.Tensor:
    """[B]: what a sample's next position id is lowered by in this layout (0 with original
    positions): original minus used position of its last real token."""
    t = layout.valid.shape[1]
    last = (layout.valid.long() * torch.arange(t, device=layout.valid.device)).argmax(dim=1, keepdim=True)
    return (layout.original_pos[0].gather(1, last) - layout.position_ids[0].gather(1, last))[:, 0]


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
    feats: torch.Tensor, valid: torch.Tensor, attention: torch.Tensor | None, rows: ImageRows, layer: int | None
) -> None:
    """Refuse non-finite visual states or attention, naming the samples of the batch and the
    images within each (one host sync).

    feats [M, N, D], valid [M, N], attention [M, H, N] or None: one row per image of ``rows``."""
    ok = (torch.isfinite(feats).all(dim=-1) | ~valid).all(dim=1)  # [M]
    if attention is not None:
        ok &= torch.isfinite(attention).all(dim=-1).all(dim=-1)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().cpu()  # image rows
        samples = rows.sample[bad]
        within = bad - rows.first_of_sample()[samples]  # each image's index within its prompt
        images = "; ".join(
            f"sample {int(b)}: image(s) {within[samples == b].tolist()}" for b in samples.unique()
        )
        where = "before the LLM" if layer is None else f"before layer {layer}"
        raise ContractError(
            f"sample(s) {samples.unique().tolist()} of the batch have NaN or inf visual token states "
            f"{where} ({images}, counting each prompt's images from 0; usually NaN/inf in their "
            "pixel_values); check those images — the other samples are fine"
        )


def instruction_states(
    h: torch.Tensor, layout: Layout, is_vis: torch.Tensor, n_visual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's instruction — its real text tokens after its last visual token — as
    states ``h`` [B, T, D] at the prune point: a new tensor [B, W, D], W = T - ``n_visual``
    (the visual tokens every row holds), real rows first in sequence order, padding rows
    zero; and their mask [B, W] bool (rows: :func:`~.attention.instruction_rows`). No host read."""
    order, real = instruction_rows(layout.valid, is_vis, n_visual)
    return _take_rows(h, order) * real[..., None].to(h.dtype), real


class PrunedDecoder:
    """Callable standing in for ``language_model.forward`` while a handle is attached."""

    def __init__(
        self,
        lm: Any,
        handle: PruneHandle,
        grid: tuple[int, int] | None = None,
        rope_rows: int = 1,
    ) -> None:
        """``grid``: every image's token grid when it is fixed (LLaVA: one image per prompt);
        None when each call names its images (``Pending.grids``). ``rope_rows``: 1 for 1-D
        RoPE position ids [B, T], 3 for M-RoPE's [3, B, T]."""
        self.lm = lm
        self.handle = handle
        self.grid = grid
        self.rope_rows = rope_rows
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
        """(cos, sin) of the model's own rotary embedding for position ids [R, B, T]."""
        cos, sin = self.lm.rotary_emb(h, position_ids=self._layer_positions(position_ids, rope=True))
        return cos, sin

    def _layer_positions(self, position_ids: torch.Tensor, rope: bool = False) -> torch.Tensor | None:
        """What the model's own modules take: [B, T] for 1-D RoPE; [3, B, T] for the rotary
        embedding of M-RoPE, and None for its layers (they read positions only for packed
        flash attention, which vtprune refuses)."""
        if self.rope_rows == 1:
            return position_ids[0]
        return position_ids if rope else None

    def _positions(self, position_ids: torch.Tensor | None, b: int, t: int, start: int, dev: torch.device) -> torch.Tensor:
        """The call's position ids as [R, B, T]: given ones ([B, T], [1, T], [R, B, T], [1, B, T]
        (one row for every axis, which transformers builds when ``generate`` continues from a
        cache), or M-RoPE's [4, B, T] whose first row is the text position), else
        ``start + arange(T)``."""
        r = self.rope_rows
        if position_ids is None:
            return (torch.arange(t, device=dev) + start).view(1, 1, t).expand(r, b, t)
        pos = position_ids.to(dev)
        if pos.dim() == 3 and r == 3 and pos.shape[0] == 4:
            pos = pos[1:]  # generate's text row serves mask building only; vtprune builds its own
        if pos.dim() == 3 and pos.shape[0] == 1:
            pos = pos[0]  # one row for every axis: generate continuing from a cache (text only)
        if pos.dim() == 2:
            pos = pos[None].expand(r, -1, -1)
        if pos.dim() != 3 or pos.shape[0] != r or pos.shape[2] != t:
            want = "[B, T], [1, T] or [1, B, T]" if r == 1 else "[B, T], [1, B, T], [3, B, T] or [4, B, T]"
            raise ContractError(f"position_ids must be {want} for {t} tokens, got {tuple(position_ids.shape)}")
        return pos.expand(r, b, t)

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
        pos = self._positions(position_ids, b, t, 0, dev)
        if visual is None or visual.shape != (b, t):
            visual = torch.zeros(b, t, dtype=torch.bool, device=dev)
        visual = visual.to(dev)
        counts = visual.sum(dim=1).cpu()  # one host read: how many visual tokens each sample holds
        points: list[PrunePoint] = list(self.handle.schedule.points)
        rows = None
        if bool((counts == 0).all()):
            points = []  # text only: nothing to prune
        else:
            rows = self._image_rows(signals, counts, dev)
        vis_rank = torch.where(visual, visual.long().cumsum(dim=1) - 1, torch.full_like(visual, -1, dtype=torch.long))
        slots = torch.arange(t, device=dev)[None].expand(b, t)
        layout = Layout(slots, valid, vis_rank, pos, pos)
        records: list[PruneRecord] = []
        by_layer = {p.layer: p for p in points}
        needs = self.handle.strategy.needs
        needs_attention = "attention" in needs
        # attention-like signals of a point before layer i are scored by layer i - 1 on its
        # input ("previous": FastV, SparseVLM's code) or by layer i on its own ("current")
        keeps_input = ("attention" in needs or "text_attention" in needs) and self.handle.attention_source == "previous"
        if None in by_layer:
            assert rows is not None
            h, layout = self._prune(by_layer[None], h, layout, None, signals, rows, records, t)
        mask = self._prefill_mask(layout.valid, h.dtype)
        pe = self._rope(h, layout.position_ids)
        stage_of_layer: list[int] = []
        layouts = [layout]
        hidden: list[torch.Tensor] = []
        saved: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
        for i, layer in enumerate(self.layers):
            if i in by_layer:
                assert rows is not None
                # the layer whose attention scores this point, and the states entering it (the
                # layout is the same: ``saved`` is taken after any pruning before layer i - 1)
                if self.handle.attention_source == "previous" and saved is not None:
                    scorer = Scoring(self.layers[i - 1], saved[0], saved[1])
                else:
                    scorer = Scoring(layer, h, pe)
                attention = None
                if needs_attention:
                    query = (layout.valid.long() * torch.arange(layout.valid.shape[1], device=dev)).argmax(dim=1)
                    attention = query_attention(scorer.layer, scorer.hidden, scorer.position_embeddings, query, layout.valid)
                h, layout = self._prune(by_layer[i], h, layout, attention, signals, rows, records, t, scorer)
                layouts.append(layout)
                mask = self._prefill_mask(layout.valid, h.dtype)
                pe = self._rope(h, layout.position_ids)
            stage_of_layer.append(len(layouts) - 1)
            if keeps_input and (i + 1) in by_layer:
                saved = (h, pe)
            if want_hidden:
                hidden.append(h)
            out = layer(
                h,
                attention_mask=mask,
                position_ids=self._layer_positions(layout.position_ids),
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
            setattr(
                cache,
                STATE_ATTR,
                DecodeState(
                    owner=id(self.handle),
                    stage_of_layer=stage_of_layer,
                    key_valid=[lay.valid for lay in layouts],
                    shift=[_decode_shift(lay) for lay in layouts],
                    seen=t,
                ),
            )
        return h, tuple(hidden) if want_hidden else None

    def _image_rows(self, signals: Pending, counts: torch.Tensor, dev: torch.device) -> ImageRows:
        """The call's images as context rows; checks every sample's image tokens against them."""
        if signals.grids is not None:
            sample = signals.image_sample
            assert sample is not None, "Pending.grids comes with Pending.image_sample"
            return ImageRows.build(signals.grids, sample, counts, dev)
        assert self.grid is not None, "an adapter without a fixed grid passes Pending.grids"
        n = self.grid[0] * self.grid[1]
        if bool((counts != n).any()):
            raise ContractError(
                f"every sample must hold exactly one image of {n} visual tokens; got "
                f"{counts.tolist()} image tokens per sample (multi-image prompts are not supported yet)"
            )
        return ImageRows.one_per_sample(counts.shape[0], self.grid, dev)

    def _prune(
        self,
        point: PrunePoint,
        h: torch.Tensor,
        layout: Layout,
        attention: torch.Tensor | None,
        signals: Pending,
        rows: ImageRows,
        records: list[PruneRecord],
        original_len: int,
        scorer: Scoring | None = None,
    ) -> tuple[torch.Tensor, Layout]:
        """Run the strategy at one prune point (one context row per image) and drop the
        tokens it does not keep. ``scorer``: the layer whose attention gives ``text_attention``
        and its input (None before the LLM)."""
        start = time.perf_counter()
        b, t, d = h.shape
        m, (gh, gw) = rows.count, rows.canvas
        nc = gh * gw
        is_vis = layout.vis_rank >= 0  # [B, T]
        rank = layout.vis_rank.clamp(min=0)
        # each sequence slot's flat place on the canvas of image rows; M * nc = "not visual"
        target = torch.where(is_vis, rows.vis_row.gather(1, rank) * nc + rows.vis_cell.gather(1, rank), m * nc)
        flat_target = target.reshape(-1)
        # Context on the ORIGINAL grids: survivors in their original cells, zeros elsewhere.
        feats = torch.zeros(m * nc + 1, d, dtype=h.dtype, device=h.device)
        feats.index_copy_(0, flat_target, h.reshape(b * t, d))
        feats = feats[: m * nc].view(m, nc, d)
        valid = torch.zeros(m * nc + 1, dtype=torch.bool, device=h.device)
        valid.index_fill_(0, flat_target, True)
        valid = valid[: m * nc].view(m, nc)
        att_full = None
        if attention is not None:  # [B, H, T] -> [M, H, nc]
            heads = attention.shape[1]
            att_full = torch.zeros(m * nc + 1, heads, dtype=attention.dtype, device=attention.device)
            att_full.index_copy_(0, flat_target, attention.transpose(1, 2).reshape(b * t, heads))
            att_full = att_full[: m * nc].view(m, nc, heads).transpose(1, 2).contiguous()
        _check_finite(feats, valid, att_full, rows, point.layer)
        sample = rows.sample.to(h.device)
        text, text_valid = None, None
        if "text_features" in self.handle.strategy.needs:
            fewest = int(is_vis.sum(dim=1).min())  # visual tokens every sample still holds
            text, text_valid = instruction_states(h, layout, is_vis, fewest)
            text, text_valid = text.index_select(0, sample), text_valid.index_select(0, sample)
        # text_attention (SparseVLM): the instruction rows' attention at this layer, on the
        # canvas; its rows are those of instruction_states, so text_valid is the same mask
        text_att = None
        if "text_attention" in self.handle.strategy.needs and scorer is not None:
            fewest_vis = int(is_vis.sum(dim=1).min())
            text_att, att_real = instruction_attention(
                scorer.layer, scorer.hidden, scorer.position_embeddings, layout.valid,
                is_vis, fewest_vis, flat_target, m, nc,
            )
            text_valid = att_real.index_select(0, sample)
        budget = rows.budgets(point.keep)
        ctx = PruneContext(
            features=feats,
            grid=(gh, gw),
            budget=budget,
            valid=None if rows.uniform and not records else valid,  # nothing pruned yet: all valid
            image=signals.image,
            attention=att_full,
            cls_attention=signals.cls_attention,
            text_features=text,
            layer=point.layer,
            original_count=nc,
            text_valid=text_valid,
            grids=None if rows.uniform else rows.grids,
            text_attention=text_att,
        )
        sel = self.handle.strategy(ctx)
        counts = sel.counts.cpu()
        if not bool((counts == budget).all()):
            raise ContractError(
                f"strategy {self.handle.strategy.name!r} kept {counts.tolist()} tokens per image at "
                f"layer {point.layer}; the budget is {budget.tolist()}"
            )
        kept = torch.cat([sel.token_mask(nc).reshape(-1), torch.zeros(1, dtype=torch.bool, device=h.device)])
        keep = torch.where(is_vis, kept[target], layout.slots >= 0)  # [B, T]; old fillers go
        t_new = int(keep.sum(dim=1).max())
        pos = torch.arange(t, device=h.device).expand(b, t)
        # dropped tokens sort first, so the last t_new slots hold each sample's kept tokens in
        # order, after as many dropped ones (fillers) as the sample keeps fewer than t_new
        idx = torch.where(keep, pos + t, pos).argsort(dim=1)[:, t - t_new :]  # [B, T']
        real = keep.gather(1, idx)
        h_new = _take_rows(h, idx)
        vis_rank = torch.where(real, layout.vis_rank.gather(1, idx), -1)
        if sel.features is not None:  # merging strategies replace the kept tokens' states
            merged = torch.zeros(m * nc + 1, d, dtype=h_new.dtype, device=h.device)
            flat_kept = torch.where(sel.kept_mask, sel.indices + torch.arange(m, device=h.device)[:, None] * nc, m * nc)
            merged.index_copy_(0, flat_kept.reshape(-1), sel.features.reshape(-1, d).to(h_new.dtype))
            new_target = target.gather(1, idx)
            h_new = torch.where((vis_rank >= 0)[..., None], merged[new_target], h_new)
        slots = torch.where(real, layout.slots.gather(1, idx), -1)
        r = layout.original_pos.shape[0]
        original_pos = layout.original_pos.gather(2, idx[None].expand(r, b, t_new))
        new_valid = layout.valid.gather(1, idx) & real
        position_ids = self._compact(original_pos, slots, new_valid) if self.handle.schedule.positions == "compact" else original_pos
        new = Layout(slots, new_valid, vis_rank, original_pos, position_ids)
        new_index = torch.full((b, original_len + 1), -1, dtype=torch.long, device=slots.device)
        new_index.scatter_(1, torch.where(real, slots, original_len), torch.arange(t_new, device=slots.device)[None].expand(b, t_new))
        records.append(
            PruneRecord(
                layer=point.layer,
                indices=rows.image_indices(sel.indices.detach()).clone(),
                counts=counts.clone(),
                original_count=nc,
                kept_positions=slots,
                new_index=new_index[:, :original_len],
                position_ids=position_ids if r > 1 else position_ids[0],
                seconds=time.perf_counter() - start,
                image_sample=rows.sample.clone(),
                grids=rows.grids.clone(),
            )
        )
        return h_new, new

    def _compact(self, original_pos: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Compact position ids [R, B, T'] of a pruned layout.

        1-D RoPE: each token moves down by the tokens removed before it (survivors numbered
        contiguously; what FastV / PyramidDrop's code does). M-RoPE: the survivors of a sample
        are numbered contiguously on all three axes from its first token's position (the
        image's 2-D layout is given up, as renumbering any pruned grid must)."""
        b, t_new = slots.shape
        if original_pos.shape[0] == 1:
            kept = slots >= 0  # padding is kept (and invalid); fillers are not
            removed_before = torch.where(kept, slots - (kept.long().cumsum(dim=1) - 1), 0)
            return original_pos - removed_before[None]
        first = torch.where(valid, torch.arange(t_new, device=slots.device), t_new).argmin(dim=1)  # [B]
        base = original_pos[0].gather(1, first[:, None])  # [B, 1]
        compact = base + valid.long().cumsum(dim=1) - 1
        return compact[None].expand_as(original_pos).contiguous()

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
        if attention_mask is not None and 0 < attention_mask.shape[1] - state.seen < h.shape[1]:
            # generate() continuing from a cache slices the new tokens with the cache's length,
            # which pre-LLM pruning shortened: the mask (the whole sequence) says which are new
            fresh = attention_mask.shape[1] - state.seen
            h = h[:, -fresh:]
            position_ids = None if position_ids is None else position_ids[..., -fresh:]
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
        pos = self._positions(position_ids, b, q, state.seen, dev)  # [R, B, q]
        stages = []
        for s, kv in enumerate(state.key_valid):
            key_valid = torch.cat([kv, new_valid], dim=1)
            stage_pos = pos - state.shift[s][None, :, None]
            stages.append((key_valid, self._decode_mask(key_valid, q, h.dtype), stage_pos, self._rope(h, stage_pos)))
        hidden: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            _, mask, stage_pos, pe = stages[state.stage_of_layer[i]]
            if want_hidden:
                hidden.append(h)
            out = layer(
                h,
                attention_mask=mask,
                position_ids=self._layer_positions(stage_pos),
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
