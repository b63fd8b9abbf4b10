"""The pruned decoder loop for Llama-like language models (Llama, Vicuna, Mistral, Qwen2 text).

It replaces the language model's forward on one instance (see :class:`~.decoder_adapter.
DecoderAdapter`) and does what ``LlamaModel.forward`` does — embed positions, build masks,
run the layers, final norm — except that between layers it may drop visual tokens. The loop
owns no family knowledge and no pruning logic of its own:

* :mod:`.prune_step` turns (hidden states, layout, signals, plan) into (kept hidden states,
  kept layout, record) at each prune point;
* :mod:`.layout` holds the layout of each *stage* (a run of layers sharing one token set):
  the kept tokens, their RoPE position ids, the masks, and in ``generate`` the per-stage
  key layout of the KV cache;
* a family's *layer hooks* (:data:`LayerHook`) run after chosen layers during prefill with
  the layout in force there, so they can add their own per-token tensors at the kept
  positions (Qwen3-VL's DeepStack features).

Shapes: B samples, T tokens in the current layout, D hidden size, R rows of position ids (1
for 1-D RoPE, 3 for M-RoPE's temporal / height / width). The images of a call are the rows of
each prune point's context (:class:`~.image_rows.ImageRows`): one per prompt for LLaVA, any
number per prompt and of any grid for Qwen2-VL, each with its own budget. Samples may keep
different numbers of tokens; a shorter sample is then padded on the left with invalid
*filler* slots (never attended to, never cached as real keys), so each sample's last real
token stays last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..core.errors import ContractError
from ..core.schedule import PrunePoint
from .compat import cache_kwarg, model_output
from .decoder_features import sliding_window
from .image_rows import ImageRows
from .layout import (
    Layout,
    call_positions,
    decode_mask,
    decode_shift,
    initial_layout,
    prefill_mask,
)
from .layout import flat_index as _flat  # noqa: F401  (the names tests import from here)
from .layout import take_rows as _take_rows  # noqa: F401
from .pending import Pending
from .plan import PrunePlan
from .prune_step import Scoring, prune
from .records import PruneRecord

STATE_ATTR = "_vtprune_state"
"""Attribute under which the decode state rides on the KV cache object of a generation."""


@dataclass
class DecodeState:
    """What decode steps need to know about a pruned prefill (kept on the cache object)."""

    owner: int  # id() of the PrunePlan (one per handle) that filled the cache
    stage_of_layer: list[int]
    key_valid: list[torch.Tensor]  # per stage [B, K_s]: keys in that stage's cache that are real
    shift: list[torch.Tensor]  # per stage [B]: subtracted from new position ids (compact mode)
    seen: int  # tokens of the unpruned sequence so far


class LayerHook(Protocol):
    """Runs after one decoder layer during prefill; returns the hidden states that go on.

    Args:
        layer: index of the layer just run.
        hidden: [B, T, D] its output, in ``layout``.
        layout: the token layout in force at that layer (after every prune point before it):
            ``layout.slots`` [B, T] gives each slot's original sequence position (-1 on
            fillers) and ``layout.vis_rank`` its visual rank, so a hook gathers its own
            per-token tensors at the kept positions.
        signals: the call's :class:`Pending` (a family's own tensors in ``signals.extras``).

    A hook must not change the shape of ``hidden``; it never runs in decode steps (which
    hold no visual tokens).
    """

    def __call__(self, layer: int, hidden: torch.Tensor, layout: Layout, signals: Pending) -> torch.Tensor: ...


class PrunedDecoder:
    """Callable standing in for ``language_model.forward`` while a handle is attached."""

    def __init__(
        self,
        lm: Any,
        plan: PrunePlan,
        grid: tuple[int, int] | None = None,
        rope_rows: int = 1,
        layer_hooks: Mapping[int, Sequence[LayerHook]] | None = None,
    ) -> None:
        """``plan``: what to prune, and where the records go (``plan.report``). ``grid``:
        every image's token grid when it is fixed (LLaVA: one image per prompt); None when
        each call names its images (``Pending.grids``). ``rope_rows``: 1 for 1-D RoPE position
        ids [B, T], 3 for M-RoPE's [3, B, T]. ``layer_hooks``: layer index -> hooks run, in
        order, after that layer in every prefill (:class:`LayerHook`)."""
        self.lm = lm
        self.plan = plan
        self.grid = grid
        self.rope_rows = rope_rows
        self.layers = list(lm.layers[: lm.config.num_hidden_layers])
        self.cache_kwarg = cache_kwarg(self.layers[0]) if self.layers else "past_key_values"
        self.window = sliding_window(lm.config)  # None: every layer sees the whole sequence
        self.pending: Pending | None = None
        hooks = {int(i): list(h) for i, h in (layer_hooks or {}).items() if h}
        wrong = sorted(i for i in hooks if not 0 <= i < len(self.layers))
        if wrong:
            raise ContractError(f"layer hooks after layers {wrong}; the decoder has layers 0..{len(self.layers) - 1}")
        self.after_layer: dict[int, list[LayerHook]] = hooks

    # -- masks and positions ------------------------------------------------------------------

    def _sdpa(self) -> bool:
        return getattr(self.lm.config, "_attn_implementation", "eager") == "sdpa"

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

    def _run_layer(self, layer: Any, h: torch.Tensor, mask: Any, positions: torch.Tensor,
                   pe: tuple[torch.Tensor, torch.Tensor], cache: Any, use_cache: bool) -> torch.Tensor:
        """One decoder layer of the model, as ``LlamaModel.forward`` calls it."""
        out = layer(
            h,
            attention_mask=mask,
            position_ids=self._layer_positions(positions),
            use_cache=use_cache,
            position_embeddings=pe,
            **{self.cache_kwarg: cache},
        )
        return out[0] if isinstance(out, tuple) else out

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
        dev = h.device
        valid = torch.ones(b, t, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
        visual = signals.visual
        if visual is None or visual.shape != (b, t):
            visual = torch.zeros(b, t, dtype=torch.bool, device=dev)
        visual = visual.to(dev)
        layout = initial_layout(valid, visual, call_positions(position_ids, self.rope_rows, b, t, 0, dev))
        counts = visual.sum(dim=1).cpu()  # one host read: how many visual tokens each sample holds
        points: list[PrunePoint] = [] if bool((counts == 0).all()) else list(self.plan.schedule.points)
        rows = self._image_rows(signals, counts, dev) if points else None  # text only: nothing to prune
        by_layer = {p.layer: p for p in points}
        records: list[PruneRecord] = []
        # attention-like signals of a point before layer i are scored by layer i - 1 on its
        # input ("previous": FastV, SparseVLM's code) or by layer i on its own ("current")
        keeps_input = bool(self.plan.needs & {"attention", "text_attention"}) and self.plan.attention_source == "previous"
        if None in by_layer:
            assert rows is not None
            h, layout, record = prune(self.plan, by_layer[None], h, layout, signals, rows)
            records.append(record)
        mask = prefill_mask(layout.valid, h.dtype, self._sdpa())
        pe = self._rope(h, layout.position_ids)
        stage_of_layer: list[int] = []
        layouts = [layout]
        hidden: list[torch.Tensor] = []
        saved: Scoring | None = None
        for i, layer in enumerate(self.layers):
            if i in by_layer:
                assert rows is not None
                # the layer whose attention scores this point, and the states entering it (the
                # layout is the same: ``saved`` is taken after any pruning before layer i - 1)
                scorer = saved if saved is not None else Scoring(layer, h, pe)
                h, layout, record = prune(self.plan, by_layer[i], h, layout, signals, rows, scorer)
                records.append(record)
                layouts.append(layout)
                mask = prefill_mask(layout.valid, h.dtype, self._sdpa())
                pe = self._rope(h, layout.position_ids)
            stage_of_layer.append(len(layouts) - 1)
            saved = Scoring(layer, h, pe) if keeps_input and (i + 1) in by_layer else None
            if want_hidden:
                hidden.append(h)
            h = self._run_layer(layer, h, mask, layout.position_ids, pe, cache, use_cache)
            for hook in self.after_layer.get(i, ()):
                h = hook(i, h, layout, signals)
        h = self.lm.norm(h)
        if want_hidden:
            hidden.append(h)
        self.plan.report(records)
        if cache is not None:
            setattr(
                cache,
                STATE_ATTR,
                DecodeState(
                    owner=id(self.plan),
                    stage_of_layer=stage_of_layer,
                    key_valid=[lay.valid for lay in layouts],
                    shift=[decode_shift(lay) for lay in layouts],
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
        if state is None or state.owner != id(self.plan):
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
        pos = call_positions(position_ids, self.rope_rows, b, q, state.seen, dev)  # [R, B, q]
        stages = []
        for s, kv in enumerate(state.key_valid):
            key_valid = torch.cat([kv, new_valid], dim=1)
            stage_pos = pos - state.shift[s][None, :, None]
            mask = decode_mask(key_valid, q, h.dtype, self._sdpa())
            stages.append((key_valid, mask, stage_pos, self._rope(h, stage_pos)))
        hidden: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            _, mask, stage_pos, pe = stages[state.stage_of_layer[i]]
            if want_hidden:
                hidden.append(h)
            h = self._run_layer(layer, h, mask, stage_pos, pe, cache, use_cache)
        h = self.lm.norm(h)
        if want_hidden:
            hidden.append(h)
        state.key_valid = [kv for kv, _, _, _ in stages]
        state.seen += q
        return h, tuple(hidden) if want_hidden else None


__all__ = ["PrunedDecoder", "DecodeState", "LayerHook", "Layout", "Pending", "STATE_ATTR"]
