"""Determinism across interpreters: replay a context in a fresh Python process.

``check_deterministic`` runs a strategy twice in one process, so state that is fixed for the
life of a process but differs between processes passes it: ``hash()`` of a string (salted by
``PYTHONHASHSEED``), the iteration order of a set of strings, ``id()`` of objects. The check
here runs the strategy on one context in this process and in a new interpreter started with a
different ``PYTHONHASHSEED``, and compares scores, allocations and selections exactly.

A new interpreter costs a Python + torch start-up (~2-4 s on the development machine), so the
default check (``check_hash_seed_independent``) replays in one **persistent** interpreter per
process (:class:`Replayer`, started on first use, reused by every later check and strategy):
after the first start-up a replay costs milliseconds. The opt-in
``check_deterministic_across_processes`` starts a brand-new interpreter every time.

The fresh interpreter must be able to rebuild the strategy: it is pickled when it can be
(stage functions defined at module level of an importable module), else rebuilt by its
registered name (``vtprune.get_strategy(name, **params)``) or from its registered stage names
(``compose``). ``sys.path`` is handed down, so test modules are importable there too.
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import fields, replace
from typing import Any

import torch

from ..core import PruneContext, Strategy, default_registry
from ..core.specs import accepted_params

_CHILD = r"""
import pickle, sys
import torch
torch.set_num_threads(1)
from vtprune.conformance_tests.fresh import _child_main
_child_main(sys.argv[1], sys.argv[2])
"""

_SERVER = r"""
import os, sys
protocol = os.fdopen(os.dup(1), "wb")  # stdout is the protocol; prints go to stderr
os.dup2(2, 1)
import torch
torch.set_num_threads(1)
from vtprune.conformance_tests.fresh import _serve
_serve(sys.stdin.buffer, protocol)
"""

KIT_ALLOCATOR = "kit:uneven_regions"


def recipe(strategy: Strategy) -> tuple[Any, ...] | None:
    """How a fresh interpreter rebuilds ``strategy``, or None when it cannot: by pickling it,
    or by the names of a strategy or stages that *installed* plugins register (entry points;
    what this process registered by hand is not there)."""
    try:
        return ("pickle", pickle.dumps(strategy))
    except Exception:  # closures from stage factories are not picklable
        pass
    registry = default_registry()
    params = dict(strategy.params)

    def installed(kind: str, name: str) -> bool:
        registry.spec(kind, name)  # raises when unknown
        return not registry.source(kind, name).startswith("local ")

    try:
        if (installed("strategy", strategy.name)
                and registry.get_strategy(strategy.name, **params).stage_names == strategy.stage_names):
            return ("registered", strategy.name, params)
    except Exception:
        pass
    scorer, allocator, selector = strategy.stage_names
    try:
        if not (installed("scorer", scorer) and installed("selector", selector)
                and (allocator == KIT_ALLOCATOR or installed("allocator", allocator))):
            return None
        kinds = [("scorer", scorer), ("selector", selector)]
        kinds += [] if allocator == KIT_ALLOCATOR else [("allocator", allocator)]
        factories = [registry.spec(kind, name).factory for kind, name in kinds]
    except Exception:
        return None
    # the stages' own parameters only: the replay composes with the kit's schedule, and a
    # schedule parameter (e.g. FastV's layer) changes no stage output on a given context
    stage_params = {k: v for k, v in params.items()
                    if any(accepted_params(f) is None or k in (accepted_params(f) or ()) for f in factories)}
    return ("compose", strategy.name, strategy.stage_names, stage_params)


def _rebuild(how: tuple[Any, ...]) -> Strategy:
    from dataclasses import replace

    from ..core import get_strategy
    from .partners import _kit_schedule, uneven_regions_allocator

    if how[0] == "pickle":
        strategy: Strategy = pickle.loads(how[1])
        return strategy
    if how[0] == "registered":
        return get_strategy(how[1], **how[2])
    name, (scorer, allocator, selector), params = how[1:]
    registry = default_registry()
    built = registry.compose(
        scorer, "global" if allocator == KIT_ALLOCATOR else allocator, selector,
        name=name, schedule=_kit_schedule, **params,
    )
    if allocator == KIT_ALLOCATOR:
        built = replace(built, allocator=uneven_regions_allocator, stage_names=(scorer, allocator, selector))
    return built


def _context_payload(ctx: PruneContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(ctx):
        value = getattr(ctx, f.name)
        if f.name == "generator":
            out["generator_seed"] = None if value is None else value.initial_seed()
        elif isinstance(value, torch.Tensor):
            out[f.name] = value.cpu()
        else:
            out[f.name] = value
    out["device"] = str(ctx.features.device)
    return out


def _context(payload: dict[str, Any]) -> PruneContext:
    payload = dict(payload)
    device = torch.device(payload.pop("device"))
    seed = payload.pop("generator_seed")
    moved: dict[str, Any] = {
        k: v.to(device) if isinstance(v, torch.Tensor) and k != "budget" else v for k, v in payload.items()
    }
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return PruneContext(**moved, generator=generator)


def _outputs(strategy: Strategy, ctx: PruneContext) -> dict[str, torch.Tensor | None]:
    """The three stages' raw outputs (as :func:`.checks.run_stages`, without its error wrapping:
    this module must not import the checks)."""
    scores = strategy.scorer(ctx)
    alloc = strategy.allocator(ctx, scores)
    sel = strategy.selector(ctx, scores, alloc)
    return {
        "scores": scores,
        "allocation.regions": alloc.regions,
        "allocation.quotas": alloc.quotas,
        "selection.indices": sel.indices,
        "selection.counts": sel.counts,
        "selection.features": sel.features,
    }


def _child_main(inp: str, outp: str) -> None:
    with open(inp, "rb") as fh:
        job = pickle.load(fh)
    strategy = _rebuild(job["recipe"])
    result = _outputs(strategy, _context(job["ctx"]))
    with open(outp, "wb") as fh:
        pickle.dump({k: None if v is None else v.cpu() for k, v in result.items()}, fh)


def _send(stream: Any, obj: Any) -> None:
    blob = pickle.dumps(obj)
    stream.write(len(blob).to_bytes(8, "little") + blob)
    stream.flush()


def _receive(stream: Any) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the replay interpreter closed its output")
    return pickle.loads(stream.read(int.from_bytes(header, "little")))


def _serve(inp: Any, out: Any) -> None:
    """The persistent interpreter's loop: one job in, its outputs (or its error) out."""
    while True:
        try:
            job = _receive(inp)
        except EOFError:
            return
        try:
            result = _outputs(_rebuild(job["recipe"]), _context(job["ctx"]))
            _send(out, ("ok", {k: None if v is None else v.cpu() for k, v in result.items()}))
        except Exception as exc:
            _send(out, ("error", f"{type(exc).__name__}: {exc}"))


class Replayer:
    """One interpreter, started with another ``PYTHONHASHSEED``, that replays jobs until this
    process exits (or :meth:`close`). ``replay(strategy, ctx)`` = :func:`replay_in_fresh_interpreter`
    without the start-up after the first call."""

    _shared: Replayer | None = None

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = _other_hash_seed()
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log,
        )

    @classmethod
    def shared(cls) -> Replayer:
        """The process-wide replayer (started on first use; a dead one is replaced)."""
        if cls._shared is None or cls._shared._proc.poll() is not None:
            cls._shared = cls()
            atexit.register(cls._shared.close)
        return cls._shared

    def replay(self, strategy: Strategy, ctx: PruneContext) -> dict[str, Any]:
        how = recipe(strategy)
        if how is None:
            raise RuntimeError(f"strategy {strategy.name!r} cannot be rebuilt in another interpreter")
        try:
            _send(self._proc.stdin, {"recipe": how, "ctx": _context_payload(ctx)})
            status, value = _receive(self._proc.stdout)
        except (EOFError, BrokenPipeError, OSError) as exc:
            self._log.seek(0)
            tail = "\n".join(self._log.read().decode(errors="replace").strip().splitlines()[-6:])
            raise RuntimeError(f"the replay interpreter died ({exc}):\n{tail}") from None
        if status != "ok":
            raise RuntimeError(f"the replay interpreter could not run the strategy: {value}")
        result: dict[str, Any] = value
        return result

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()


def _other_hash_seed() -> str:
    current = os.environ.get("PYTHONHASHSEED")
    if current is not None and current.isdigit():
        return str((int(current) + 1) % 4294967296)
    return "12345"  # this process hashes with a random (or no fixed) seed: any fixed one differs


def replay_in_fresh_interpreter(strategy: Strategy, ctx: PruneContext, timeout: float = 300.0) -> dict[str, Any]:
    """Outputs of ``strategy`` on ``ctx`` computed in a new interpreter (other PYTHONHASHSEED)."""
    how = recipe(strategy)
    if how is None:
        raise RuntimeError(
            f"strategy {strategy.name!r} cannot be rebuilt in a fresh interpreter: define its "
            "stage functions at module level (picklable) or register it through an entry point"
        )
    with tempfile.TemporaryDirectory(prefix="vtprune-kit-") as tmp:
        inp, outp = os.path.join(tmp, "job.pkl"), os.path.join(tmp, "out.pkl")
        with open(inp, "wb") as fh:
            pickle.dump({"recipe": how, "ctx": _context_payload(ctx)}, fh)
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = _other_hash_seed()
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, inp, outp],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise RuntimeError(f"the fresh interpreter failed:\n{tail}")
        with open(outp, "rb") as fh:
            result: dict[str, Any] = pickle.load(fh)
    return result


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(torch.isclose(a, b, rtol=0.0, atol=0.0, equal_nan=True).all())
    return torch.equal(a, b)


def differences(strategy: Strategy, ctx: PruneContext, persistent: bool = False,
                ) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """Outputs that differ between this process and another interpreter (a brand-new one, or
    the persistent :class:`Replayer`), and both sets of outputs."""
    g = ctx.generator
    if g is not None:  # the generator in the state it was seeded with, as the child gets it
        ctx = replace(ctx, generator=torch.Generator(device=g.device).manual_seed(g.initial_seed()))
    here = _outputs(strategy, ctx)
    there = Replayer.shared().replay(strategy, ctx) if persistent else replay_in_fresh_interpreter(strategy, ctx)
    return [k for k in here if not _equal(here[k], there.get(k))], here, there


__all__ = ["Replayer", "differences", "recipe", "replay_in_fresh_interpreter"]
