"""Adapter for transformers' Qwen3-VL family: ``Qwen3VLForConditionalGeneration`` and
``Qwen3VLMoeForConditionalGeneration`` (and their base ``*Model`` classes).

Qwen3-VL is Qwen2.5-VL's token layout (dynamic resolution, several images per prompt, a
2 x 2 patch merger, M-RoPE position ids computed by the model on the unpruned sequence), so
the adapter is a :class:`~.qwen2_vl.Qwen2VLAdapter` that overrides only what differs:

* **DeepStack.** The vision tower also returns features of some of its blocks (8/16/24 in
  the released models), and the language model adds the k-th of them to the output of its
  layer k at the visual positions. Here a *layer hook* (:meth:`Qwen3VLAdapter.layer_hooks`,
  the decoder's per-layer seam) does it: a forward pre-hook on the language model takes the
  call's ``visual_pos_masks`` / ``deepstack_visual_embeds`` into ``Pending.extras``, and after
  each DeepStack layer :meth:`DeepStack.add` gathers, for every slot of the layout in force
  there, the feature row of the token it holds (``layout.slots``: its original position) —
  so each kept visual token receives exactly its own features and a dropped one none.
* **Decoder**: per-head q/k RMSNorm before RoPE (replayed by the attention recomputation,
  :func:`~.attention.project_heads`) and interleaved M-RoPE, whose bands the model's rotary
  module already interleaves (no ``mrope_section`` needed in the config); the MoE text model
  runs its experts inside each layer's own ``mlp``. The learned vision position embedding
  and ``mm_token_type_ids`` stay inside the model's own forward (before pruning).
* **Refused**: videos (as for Qwen2-VL), ``output_router_logits`` (they would cover the
  pruned sequence), and Qwen3.5 (:data:`REFUSED_CLASSES`): three of its four decoder layers
  are linear attention, whose recurrent state is not a per-token cache that dropping tokens
  can prune exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import ContractError
from ..core.hookspecs import AdapterSpec, hookimpl
from .decoder import LayerHook, Pending
from .decoder_adapter import Call
from .layout import Layout
from .plan import PrunePlan
from .qwen2_vl import Qwen2VLAdapter

MODEL_CLASSES = (
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLModel",
    "Qwen3VLMoeForConditionalGeneration",
    "Qwen3VLMoeModel",
)
REFUSED_CLASSES = (
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5Model",
    "Qwen3_5MoeForConditionalGeneration",
    "Qwen3_5MoeModel",
)
"""Qwen3.5: claimed by name so that ``attach`` says why it is refused."""
QWEN3_5_REASON = (
    "Qwen3.5 is not supported: three of every four of its decoder layers are linear attention "
    "(Gated DeltaNet), whose recurrent state mixes every token it has seen instead of caching "
    "one key per token, so dropping visual tokens after the first layer cannot be replayed "
    "exactly by vtprune's decoder loop (and it has no DeepStack). Detach, or use Qwen3-VL"
)
DEEPSTACK = "deepstack"
"""Key of :class:`DeepStack` in ``Pending.extras``."""


@dataclass(frozen=True)
class DeepStack:
    """One call's DeepStack features, indexed by original sequence position.

    Attributes:
        row: [B, T0] long, the feature row of the visual token at each original position
            (-1 elsewhere): ``visual_pos_masks`` numbered in row-major order, as the model
            concatenates its features.
        features: per DeepStack layer k, [N, D] the features added after LLM layer k (N =
            visual tokens of the whole batch).
    """

    row: torch.Tensor
    features: tuple[torch.Tensor, ...]

    @classmethod
    def of_call(cls, visual_pos_masks: torch.Tensor, embeds: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> DeepStack:
        """From the language model's ``visual_pos_masks`` [B, T0] bool and
        ``deepstack_visual_embeds`` (per layer [N, D])."""
        mask = visual_pos_masks.bool()
        b, t = mask.shape
        numbered = mask.reshape(-1).long().cumsum(0).view(b, t) - 1
        row = torch.where(mask, numbered, -1)
        return cls(row, tuple(embeds))

    def add(self, layer: int, hidden: torch.Tensor, layout: Layout) -> torch.Tensor:
        """``hidden`` [B, T, D] (the output of ``layer``, in ``layout``) plus each slot's own
        DeepStack feature of that layer: a kept visual token gets its row, text, padding and
        filler slots get nothing. The same sum as the model's ``_deepstack_process`` for the
        tokens present; no host read."""
        if layer >= len(self.features):
            return hidden
        table = self.features[layer]
        if table.shape[0] == 0:
            return hidden
        b, t, d = hidden.shape
        slots = layout.slots.to(self.row.device)
        row = torch.where(slots >= 0, self.row.gather(1, slots.clamp(min=0)), -1).to(hidden.device)  # [B, T]
        table = table.to(hidden.device, hidden.dtype)
        picked = table.index_select(0, row.clamp(min=0).reshape(-1)).view(b, t, d)  # [B, T, D]
        return hidden + torch.where((row >= 0)[..., None], picked, torch.zeros((), dtype=hidden.dtype, device=hidden.device))


def deepstack_hook(layer: int, hidden: torch.Tensor, layout: Layout, signals: Pending) -> torch.Tensor:
    """The :class:`~.decoder.LayerHook` adding the call's DeepStack features (none for a
    call without images)."""
    stack: DeepStack | None = signals.extras.get(DEEPSTACK)
    return hidden if stack is None else stack.add(layer, hidden, layout)


def _moe_output(module: Any, args: Any, output: Any) -> Any:
    """The pruned decoder's ``BaseModelOutputWithPast`` as the MoE text model's
    ``MoeModelOutputWithPast`` (``router_logits`` None: they are refused while pruning)."""
    from transformers.modeling_outputs import MoeModelOutputWithPast

    return output if isinstance(output, MoeModelOutputWithPast) else MoeModelOutputWithPast(**dict(output.items()))


def _installed(names: tuple[str, ...]) -> tuple[type, ...]:
    try:
        import transformers
    except ImportError:
        return ()
    return tuple(getattr(transformers, name) for name in names if hasattr(transformers, name))


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL and Qwen3-VL-MoE: Qwen2.5-VL's steps plus DeepStack through a layer hook."""

    name = "hf-qwen3-vl"
    family = "Qwen3-VL"
    model_classes = MODEL_CLASSES

    @classmethod
    def supports(cls, model: Any) -> bool:
        """Qwen3-VL models, and Qwen3.5 ones (to refuse them by name)."""
        refused = _installed(REFUSED_CLASSES)
        return super().supports(model) or (bool(refused) and isinstance(model, refused))

    @classmethod
    def unsupported_reason(cls, model: Any) -> str | None:
        refused = _installed(REFUSED_CLASSES)
        if refused and isinstance(model, refused):
            return QWEN3_5_REASON
        return super().unsupported_reason(model)

    @classmethod
    def config_reason(cls, model: Any) -> str | None:
        """None: the rotary module interleaves M-RoPE with its own sections (a default when
        the config names none), and DeepStack runs through the layer hooks."""
        return None

    # -- steps ----------------------------------------------------------------------------------

    def refuse_call(self, call: Call) -> None:
        """Videos (as Qwen2-VL), and MoE router logits (they would cover the pruned sequence)."""
        super().refuse_call(call)
        if call("output_router_logits"):
            raise ContractError(
                "output_router_logits is not available while vtprune pruning is attached (the "
                "router sees the pruned sequence); call without it, or detach first"
            )

    def layer_hooks(self) -> dict[int, list[LayerHook]]:
        """:func:`deepstack_hook` after each of the first ``len(deepstack_visual_indexes)``
        layers (those the model adds DeepStack features to)."""
        count = len(getattr(self.config.vision_config, "deepstack_visual_indexes", None) or ())
        return {i: [deepstack_hook] for i in range(min(count, self.num_layers))}

    def model_hooks(self, plan: PrunePlan) -> list[Any]:
        """A pre-hook on the language model taking the call's DeepStack inputs; for the MoE
        text model also a hook giving the decoder's output the ``router_logits`` field (None)
        that ``Qwen3VLMoeForConditionalGeneration`` reads."""
        hooks = [self.lm.register_forward_pre_hook(self._take_deepstack, with_kwargs=True)]
        if getattr(self.lm.config, "num_experts", None):
            hooks.append(self.lm.register_forward_hook(_moe_output))
        return hooks

    def _take_deepstack(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """``visual_pos_masks`` / ``deepstack_visual_embeds`` of this language-model call ->
        ``pending.extras[DEEPSTACK]`` (a call without them carries none)."""
        decoder = self._decoder
        if decoder is None:
            return
        if decoder.pending is None:  # the language model called on its own: nothing to prune
            decoder.pending = Pending()
        mask, embeds = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
        if mask is None or not embeds:
            decoder.pending.extras.pop(DEEPSTACK, None)
            return
        decoder.pending.extras[DEEPSTACK] = DeepStack.of_call(mask, embeds)


@hookimpl
def vtprune_adapters() -> list[AdapterSpec]:
    """The built-in Qwen3-VL adapter (entry point ``qwen3_vl`` of the vtprune distribution)."""
    return [
        AdapterSpec(
            Qwen3VLAdapter.name,
            Qwen3VLAdapter,
            models=MODEL_CLASSES,
            description=(
                "transformers' Qwen3-VL / Qwen3-VL-MoE (dynamic resolution, several images per prompt, "
                "interleaved M-RoPE, DeepStack through a layer hook); Qwen3.5 refused with the reason"
            ),
        )
    ]


__all__ = ["DeepStack", "Qwen3VLAdapter", "deepstack_hook", "vtprune_adapters"]
