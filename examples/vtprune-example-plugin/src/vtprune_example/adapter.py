"""The plugin module of the example's backbone adapter: :class:`ToyVLMAdapter` for ToyVLM.

A second entry point of this distribution names it (``toy_vlm`` in pyproject.toml), so
``vtprune.attach(ToyVLM(), "uniform", keep=0.25)`` finds the adapter with nothing imported
by hand. The adapter prunes before the LLM only: a forward hook on the vision projection
runs the strategy on the visual tokens it outputs and returns the kept ones; ``remove``
takes the hooks off again, so the model computes exactly as before.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vtprune import ContractError, PruneContext, hookimpl
from vtprune.backbones import AdapterSpec, BackboneAdapter, PruneRecord

from .toy_vlm import ToyVLM


class ToyVLMAdapter(BackboneAdapter):
    """ToyVLM: visual tokens pruned as they leave the vision projection (before the LLM)."""

    name = "toy-vlm"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._hooks: list[Any] = []

    @classmethod
    def supports(cls, model: Any) -> bool:
        return isinstance(model, ToyVLM)

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        spans = torch.zeros(b, self.num_visual_tokens + t, dtype=torch.bool)
        spans[:, : self.num_visual_tokens] = True  # visual tokens first, then the text
        return spans

    def signals(self, layer: int | None) -> frozenset[str]:
        return frozenset()  # features only: no image, no attention

    def install(self, plan: Any) -> None:
        if getattr(self.model, "_vtprune_attached", False):
            raise ContractError("a vtprune handle is already attached to this ToyVLM; detach it first")
        points = plan.schedule.points
        if len(points) != 1 or points[0].layer is not None:
            raise ContractError("the toy-vlm adapter prunes once, before the LLM: use a pre-LLM schedule")
        keep = points[0].keep
        text_len = [0]

        def remember_text(module: Any, args: Any, kwargs: Any) -> None:
            input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[1]
            text_len[0] = input_ids.shape[1]

        def prune(module: Any, args: Any, visual: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            kept = plan.strategy(PruneContext.create(visual, grid=self.grid, keep=keep))
            idx = kept.indices.clamp_min(0)  # equal budgets here: no -1 padding in practice
            out = kept.features if kept.features is not None else visual.gather(
                1, idx[..., None].expand(-1, -1, visual.shape[-1])
            )
            (b, n), k, t = visual.shape[:2], idx.shape[1], text_len[0]
            text = torch.arange(n, n + t).expand(b, t)
            new_index = torch.full((b, n + t), -1, dtype=torch.long)
            new_index.scatter_(1, idx, torch.arange(k).expand(b, k))
            new_index[:, n:] = torch.arange(k, k + t)
            plan.report([PruneRecord(
                layer=None, indices=kept.indices, counts=kept.counts, original_count=n,
                kept_positions=torch.cat([idx, text], dim=1), new_index=new_index,
                position_ids=torch.arange(k + t).expand(b, k + t),
                seconds=time.perf_counter() - start,
            )])
            return out

        self._hooks = [
            self.model.register_forward_pre_hook(remember_text, with_kwargs=True),
            self.model.vision.register_forward_hook(prune),
        ]
        self.model._vtprune_attached = True

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.model.__dict__.pop("_vtprune_attached", None)


@hookimpl
def vtprune_adapters() -> list[AdapterSpec]:
    """Called once, when vtprune builds its registry: the adapters this plugin provides."""
    return [AdapterSpec("toy-vlm", ToyVLMAdapter, models=("ToyVLM",))]


__all__ = ["ToyVLMAdapter", "vtprune_adapters"]
