"""What pruning did over a run: visual tokens per layer, FLOPs ratio, pruning step time.

Filled batch by batch from ``handle.records`` (the actual kept counts) and
:mod:`vtprune.measure` (prefill MACs of the schedule on each sample's real prompt length);
summed over every rank before it is reported, so N processes report what one would (the
pruning step's time excepted: it is wall clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vtprune.measure import ModelDims, account


@dataclass
class PruneLog:
    """Running sums over the samples of a run (padding-only requests excluded)."""

    strategy: str
    keep: float
    layers: int
    samples: int = 0
    batches: int = 0
    visual_tokens: int = 0           # sum over samples of the original visual count
    layer_visual_tokens: float = 0.0  # sum over samples of the mean over layers
    pruned_macs: int = 0
    unpruned_macs: int = 0
    prune_seconds: float = 0.0
    generate_seconds: float = 0.0
    generated_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add_batch(self, records: list[Any], lengths: list[int], real: list[bool],
                  dims: ModelDims, schedule: Any, seconds: float, new_tokens: list[int],
                  visual: list[int] | None = None) -> None:
        """One ``generate`` (or scoring) call: ``records`` its prefill's prune records
        (empty when unpruned), ``lengths`` each row's unpadded prompt length, ``real`` False
        for padding-only rows, ``visual`` each row's visual token count before pruning (its
        image tokens in ``input_ids``: Qwen2-VL images differ; default: the records'
        ``original_count``). One image per row, so image m of a record is row m."""
        self.batches += 1
        self.prune_seconds += sum(float(r.seconds) for r in records)
        self.generate_seconds += seconds
        for b, (length, keep_row) in enumerate(zip(lengths, real)):
            if not keep_row:
                continue
            n = int(visual[b]) if visual is not None else (records[0].original_count if records else 0)
            per_layer = []
            for layer in range(self.layers):
                count = n
                for r in records:
                    if r.layer is None or r.layer <= layer:
                        count = int(r.counts[b])
                per_layer.append(count)
            self.samples += 1
            self.visual_tokens += n
            self.layer_visual_tokens += sum(per_layer) / max(len(per_layer), 1)
            self.generated_tokens += new_tokens[b]
            if n:
                self.pruned_macs += account(dims, schedule, n, length).prefill
                self.unpruned_macs += account(dims, None, n, length).prefill

    def merge(self, other: PruneLog) -> None:
        for name in ("samples", "batches", "visual_tokens", "layer_visual_tokens", "pruned_macs",
                     "unpruned_macs", "prune_seconds", "generate_seconds", "generated_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, float]:
        """Numeric summary, keys prefixed ``vtprune_`` (lmms-eval keeps numeric values only)."""
        n = max(self.samples, 1)
        return {
            "vtprune_keep": float(self.keep),
            "vtprune_requests": float(self.samples),
            "vtprune_visual_tokens": self.visual_tokens / n,
            "vtprune_visual_tokens_per_layer": self.layer_visual_tokens / n,
            "vtprune_prefill_flops_ratio": (self.pruned_macs / self.unpruned_macs
                                            if self.unpruned_macs else 1.0),
            "vtprune_prune_seconds": self.prune_seconds,
            "vtprune_prune_ms_per_batch": 1000 * self.prune_seconds / max(self.batches, 1),
        }


def gather(log: PruneLog) -> PruneLog:
    """The sum of every rank's log (the log itself in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return log
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, log)
    total = PruneLog(log.strategy, log.keep, log.layers)
    for part in parts:
        total.merge(part)
    return total


def publish(log: PruneLog, rank: int) -> dict[str, float]:
    """Gather over ranks and hand the summary to lmms-eval's throughput log, which lands in
    the results file under ``throughput`` (``avg_vtprune_*``). Every rank must call it."""
    total = gather(log)
    summary = total.summary()
    if rank == 0:
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        speed = total.generated_tokens / total.generate_seconds if total.generate_seconds else 0.0
        log_metrics(total_elapsed_time=total.generate_seconds,
                    total_gen_tokens=total.generated_tokens, avg_speed=speed,
                    additional_metrics=summary)
    return summary
