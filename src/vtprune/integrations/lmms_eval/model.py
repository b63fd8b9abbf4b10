"""The lmms-eval model ``vtprune``: a transformers VLM with a vtprune strategy attached.

    lmms-eval --model vtprune \\
        --model_args pretrained=LOCAL_DIR,strategy=altp,keep=0.1[,positions=compact,...] \\
        --tasks TASK --batch_size 4

Every ``model_args`` key the class does not name below is a strategy parameter for
``vtprune.get_strategy(strategy, **params)`` (e.g. ``n_segments=64`` for ``altp``).
``strategy=none`` runs the model unpruned (the baseline row).

Batches are padded on the left and run through ``model.generate`` with the strategy attached;
vtprune prunes each sample on its own, so a sample's output does not depend on its
batch-mates (greedy decoding or beam search; sampling is refused, its random stream is
shared by the batch).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms

from vtprune.measure import ModelDims

from .families import load
from .report import PruneLog, publish

UNPRUNED = "none"


class VTPrune(lmms):
    """lmms-eval model wrapping a vtprune-pruned transformers VLM (see the module docstring).

    Args:
        pretrained: a local ``save_pretrained`` directory (model + processor) or
            ``vtprune:grounding`` (the shipped grounding stand-in).
        strategy: a registered vtprune strategy (``vtprune strategies``) or ``none``.
        keep: share (or count) of the visual tokens kept, as in ``vtprune.attach``.
        positions / attention_source: passed to ``vtprune.attach``.
        batch_size: requests per ``generate`` call (an integer; ``auto`` is not supported).
        device, dtype, attn_implementation: where and how the model runs.
        max_new_tokens: used when a task's ``generation_kwargs`` give none.
        threads: ``torch.set_num_threads`` for this process (e.g. 1 per process on a CPU).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        strategy: str = "altp",
        keep: float = 0.25,
        positions: str | None = None,
        attention_source: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        max_new_tokens: int = 32,
        threads: int | None = None,
        max_batch_size: int | None = None,
        **strategy_params: Any,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported by the vtprune model; pass an integer")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        if device is None or (self._world_size > 1 and str(device).startswith("cuda")):
            device = str(self.accelerator.device)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        self.family, self.loaded = load(str(pretrained), torch_dtype, str(device), attn_implementation)
        self._device = torch.device(device)
        self.strategy = str(strategy)
        self.keep = float(keep) if self.strategy != UNPRUNED else 1.0
        self.handle = None
        if self.strategy != UNPRUNED:
            import vtprune

            options: dict[str, Any] = {"positions": positions, "attention_source": attention_source}
            self.handle = vtprune.attach(self.loaded.model, self.strategy, keep=keep, **options,
                                         **strategy_params)
        elif strategy_params:
            raise ValueError(f"strategy=none takes no strategy parameters, got {sorted(strategy_params)}")
        self.dims = ModelDims.from_config(self.loaded.model.config)
        self.log = self._new_log()

    # -- lmms-eval's model interface ------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.processor.tokenizer

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Greedy (or beam) generation, ``batch_size`` requests per padded batch."""
        out: list[GenerationResult | None] = [None] * len(requests)
        for idx, gen_kwargs in self._batches(requests, key=lambda r: r.args[1]):
            texts, counts = self._generate([requests[i] for i in idx], dict(gen_kwargs))
            for i, text, tc in zip(idx, texts, counts):
                out[i] = GenerationResult(text=text, token_counts=tc)
        self._publish()
        return [r for r in out if r is not None]

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """Per request ``(loss, is_greedy)``: the mean negative log-likelihood per token of the
        continuation after its context — lmms-eval's own convention (its ``llava_hf`` returns
        the model's ``loss``; ``multiple_choice`` picks ``argmin``, see lmms-eval issue #370),
        not the summed log-probability its base-class docstring describes — and whether
        greedy decoding would produce the continuation.

        The context is pruned at prefill exactly as in ``generate`` (the query token of
        attention-scored strategies is the context's last token, never the continuation's);
        the continuation is then fed token by token through the KV cache (teacher-forced
        ``generate``), in padded batches.

        Each pair is returned inside a ``GenerationResult``: lmms-eval 0.7.3 passes every
        response through ``unwrap_generation_output``, which turns a bare tuple into its
        string (``multiple_choice`` then fails unpacking it), but hands a
        ``GenerationResult``'s ``text`` on untouched.
        """
        if not self.family.loglikelihood:
            raise NotImplementedError(
                f"the {self.family.name} family cannot score continuations with vtprune; use a "
                "generate_until task (output_type: generate_until)")
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for idx, _ in self._batches(requests, key=lambda r: None):
            for i, res in zip(idx, self._score([requests[i] for i in idx])):
                out[i] = res
        self._publish()
        return [GenerationResult(text=r) for r in out if r is not None]  # type: ignore[arg-type,unused-ignore]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "the vtprune model does not implement multi-round generation; use a single-round "
            "generate_until task")

    def clean(self) -> None:
        if self.handle is not None:
            self.handle.detach()
        super().clean()

    # -- batching -------------------------------------------------------------------------
    def _batches(self, requests: Sequence[Instance], key: Any) -> Iterator[tuple[list[int], Any]]:
        """Index lists of at most ``batch_size`` requests sharing ``key`` (generation kwargs),
        longest context first (less padding; the order never changes a sample's output)."""
        groups: dict[str, list[int]] = {}
        values: dict[str, Any] = {}
        for i, r in enumerate(requests):
            k = json.dumps(key(r), sort_keys=True, default=str)
            groups.setdefault(k, []).append(i)
            values[k] = key(r)
        for k, idx in groups.items():
            idx.sort(key=lambda i: -len(str(requests[i].args[0])))
            for start in range(0, len(idx), self.batch_size):
                yield idx[start:start + self.batch_size], copy.deepcopy(values[k])

    def _inputs(self, requests: Sequence[Instance], suffixes: Sequence[str] | None = None) -> Any:
        prompts, images = [], []
        for j, r in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = r.args
            visuals = list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])
            if len(visuals) != 1:
                raise ValueError(
                    f"{task} doc {doc_id}: the vtprune model takes exactly one image per request "
                    f"(its pruning log maps image m of a batch to request m), got {len(visuals)}")
            prompts.append(self.loaded.prompt(str(context)) + (suffixes[j] if suffixes else ""))
            images.append(visuals[0].convert("RGB") if hasattr(visuals[0], "convert") else visuals[0])
        inputs = self.loaded.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def _real(self, requests: Sequence[Instance]) -> list[bool]:
        return [not (r.metadata or {}).get("__padding_only__", False) for r in requests]

    # -- generation -----------------------------------------------------------------------
    def _generate(self, requests: Sequence[Instance], gen: dict[str, Any]) -> tuple[list[str], list[TokenCounts]]:
        until = gen.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        if float(gen.get("temperature", 0) or 0) > 0 or gen.get("do_sample"):
            raise ValueError(
                "sampling (temperature > 0 / do_sample) is not batch-exact: the batch shares one "
                "random stream. Set generation_kwargs temperature: 0 for the vtprune model")
        beams = int(gen.get("num_beams", 1) or 1)
        new_max = int(gen.get("max_new_tokens", self.max_new_tokens))
        inputs = self._inputs(requests)
        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        start = time.perf_counter()
        with torch.inference_mode():
            seqs = self.model.generate(**inputs, do_sample=False, num_beams=beams,
                                       max_new_tokens=new_max, pad_token_id=pad, eos_token_id=eos)
        seconds = time.perf_counter() - start
        new = seqs[:, inputs["input_ids"].shape[1]:]
        texts, counts, lengths = [], [], inputs["attention_mask"].sum(dim=1).tolist()
        for b, row in enumerate(new.tolist()):
            if eos in row:
                row = row[:row.index(eos)]
            text = tok.decode(row, skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            texts.append(text)
            counts.append(TokenCounts(input_tokens=int(lengths[b]), output_tokens=len(row)))
        self._log_batch(requests, inputs, seconds, [c.output_tokens or 0 for c in counts], beams)
        return texts, counts

    # -- scoring --------------------------------------------------------------------------
    def _score(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        tok = self.tokenizer
        targets = []
        for r in requests:
            context, target, _, doc_id, task, split = r.args
            cont = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            ids = tok(str(cont), add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"{task} doc {doc_id}: empty continuation {cont!r} cannot be scored")
            targets.append(ids)
        inputs = self._inputs(requests)
        steps = max(len(t) for t in targets)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        forced = torch.tensor([t + [pad] * (steps - len(t)) for t in targets], device=self.device)
        config = copy.deepcopy(self.model.generation_config)
        config.eos_token_id, config.max_new_tokens, config.min_new_tokens = None, steps, None
        config.do_sample, config.num_beams, config.pad_token_id = False, 1, pad
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config, output_logits=True,
                                      return_dict_in_generate=True,
                                      logits_processor=[_Force(forced, inputs["input_ids"].shape[1])])
        seconds = time.perf_counter() - start
        logits = torch.stack(list(out.logits), dim=1).float()                 # [B, S, V]
        logp = torch.log_softmax(logits, dim=-1).gather(2, forced[..., None])[..., 0]  # [B, S]
        greedy = logits.argmax(dim=-1) == forced                              # [B, S]
        self._log_batch(requests, inputs, seconds, [len(t) for t in targets], 1)
        return [(-float(logp[b, :len(t)].mean()), bool(greedy[b, :len(t)].all()))
                for b, t in enumerate(targets)]

    # -- pruning log ----------------------------------------------------------------------
    def _new_log(self) -> PruneLog:
        return PruneLog(self.strategy, self.keep, self.dims.layers)

    def _log_batch(self, requests: Sequence[Instance], inputs: Any, seconds: float,
                   new_tokens: list[int], beams: int) -> None:
        records = list(self.handle.records) if self.handle is not None else []
        if beams > 1:  # records hold one row per beam; beams of a sample are pruned alike
            records = [_every(r, beams) for r in records]
        schedule = self.handle.schedule if self.handle is not None else None
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        # each row's own visual tokens: the processor's image tokens (Qwen: each image its grid)
        visual = (inputs["input_ids"] == int(self.model.config.image_token_id)).sum(dim=1).tolist()
        self.log.add_batch(records, lengths, self._real(requests), self.dims, schedule, seconds,
                           new_tokens, visual=visual)

    def _publish(self) -> None:
        publish(self.log, self.rank)
        self.log = self._new_log()


class _Force:
    """Logits processor forcing row b's token at step j to ``forced[b, j]``."""

    def __init__(self, forced: torch.Tensor, prompt_length: int) -> None:
        self.forced, self.prompt_length = forced, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, self.forced[:, step:step + 1], 0.0)
        return out


def _every(record: Any, beams: int) -> Any:
    """A record view with one row per sample (rows 0, beams, 2*beams, ...)."""
    import dataclasses

    return dataclasses.replace(record, counts=record.counts[::beams])
