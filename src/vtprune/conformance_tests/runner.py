"""Entry points of the kit: run the named checks over hypothesis-generated contexts.

Plain function::

    from vtprune.conformance_tests import check_strategy, assert_conforms
    results = check_strategy("uniform")          # one CheckResult per named check
    assert_conforms(my_strategy)                   # AssertionError listing every failure

pytest::

    from vtprune.conformance_tests import parametrize_with_checks

    @parametrize_with_checks(["uniform", my_strategy])
    def test_conformance(strategy, check):
        check(strategy)
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from hypothesis import HealthCheck, Verbosity, given
from hypothesis import configuration as hypothesis_configuration
from hypothesis import seed as hypothesis_seed
from hypothesis import settings as hypothesis_settings

from ..core import (
    ContractError,
    Registry,
    Schedule,
    Strategy,
    UnknownNameError,
    default_registry,
    get_strategy,
)
from .checks import CHECKS, OPT_IN_CHECKS, Check
from .generators import ContextSpec, budget_sweep, build_context, context_specs, real_size_specs
from .partners import REGION_COUNT, _kit_schedule, uneven_regions_allocator

DEFAULT_MAX_EXAMPLES = 30
"""Contexts tried per check: for checks that draw budgets, the budget sweep's contexts (at most
a third of them) and then hypothesis' draws; all checks on one strategy: ~1-3.5 s of CPU."""


SWEEP_COST = 1.5
"""Hypothesis examples a budget-sweep context replaces: its batches are ~3x the size of a drawn
one, so the sweep costs some random draws to keep the kit's runtime at what it was."""


def check_seed(name: str) -> int:
    """The seed of one check's derandomized run: from its name (SHA-256, not ``hash()``), so
    every check draws its own contexts and they are the same in every process."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one named check on one strategy.

    Attributes:
        strategy: the strategy's name. check: the check's name.
        status: ``"passed"``, ``"failed"`` or ``"skipped"``.
        message: for failures, the broken invariant and the shrunk falsifying input.
        skip_reason: for skips, the capability flag that switched the check off.
        runs: how many contexts the check ran on (hypothesis' shrinking included).
    """

    strategy: str
    check: str
    status: Status
    message: str = ""
    skip_reason: str = ""
    runs: int = 0

    def __str__(self) -> str:
        head = f"{self.strategy} {self.check}: {self.status}"
        if self.status == "failed":
            return f"{head}\n{self.message}"
        return head + (f" ({self.skip_reason})" if self.skip_reason else "")


class _Falsified(AssertionError):
    def __init__(self, spec: ContextSpec, error: BaseException, swept: bool = False) -> None:
        super().__init__(str(error))
        self.spec = spec
        self.error = error
        self.swept = swept


def kit_settings(max_examples: int, overrides: Mapping[str, Any] | None = None) -> hypothesis_settings:
    """Hypothesis settings of the kit: no deadline, no example database, derandomized (the same
    contexts on every run, so CI is reproducible), one reported bug per check. (Hypothesis'
    other files go to a temporary directory while a check runs: see :func:`run_check`.)"""
    base: dict[str, Any] = {
        "max_examples": max_examples,
        "deadline": None,
        "database": None,
        "derandomize": True,
        "report_multiple_bugs": False,
        "verbosity": Verbosity.quiet,
        "print_blob": False,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    }
    base.update(overrides or {})
    return hypothesis_settings(**base)


@contextlib.contextmanager
def _no_hypothesis_files() -> Iterator[None]:
    """Point hypothesis' storage (``.hypothesis/`` in the working directory, where it caches
    the constants it reads from local modules even without an example database) at a
    temporary directory for the run, deleted afterwards: the kit leaves no files behind."""
    before = getattr(hypothesis_configuration, "__hypothesis_home_directory", None)
    with tempfile.TemporaryDirectory(prefix="vtprune-kit-hypothesis-") as tmp:
        hypothesis_configuration.set_hypothesis_home_dir(tmp)
        try:
            yield
        finally:
            hypothesis_configuration.set_hypothesis_home_dir(before)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Kit contexts are tiny (N <= 144 by default): intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _failure_message(
    strategy: Strategy,
    check: Check,
    error: BaseException | str,
    spec: ContextSpec | None,
    swept: bool = False,
) -> str:
    lines = [
        f"strategy {strategy.name!r} failed {check.name}",
        f"  invariant: {check.description}",
        f"  error: {error}",
    ]
    if spec is not None:
        lines += [
            f"  falsifying input ({'budget sweep, not shrunk' if swept else 'shrunk'}): {spec.describe()}",
            f"  reproduce: ctx = vtprune.conformance_tests.build_context({spec!r})",
        ]
    return "\n".join(lines)


def _sweep(strategy: Strategy, check: Check, max_examples: int, derandomize: bool) -> list[ContextSpec]:
    """The budget sweep's contexts for a check that draws budgets (at most a third of the
    examples, so that hypothesis keeps two thirds); none for keep-all / keep-none checks."""
    if check.budget != "any":
        return []
    seed = check_seed(check.name) if derandomize else None
    specs = budget_sweep(strategy.capabilities, seed)[: max_examples // 3]
    real = check.real_sizes and (check.name != "check_selector_respects_quotas" or strategy.capabilities.regions)
    return specs + (real_size_specs(strategy.capabilities, seed) if real else [])


def _smaller(failure: _Falsified, one: Callable[..., None]) -> _Falsified:
    """A budget-sweep failure reduced to one sample when one alone still fails (the sweep is
    not shrunk by hypothesis; its batches hold up to 8 samples)."""
    spec = failure.spec
    if spec.batch == 1:
        return failure
    counts = spec.counts()
    for m, k in sorted(zip(counts, spec.budgets)):
        alone = replace(
            spec,
            batch=1,
            valid_counts=None if m == spec.num_tokens else (m,),
            padding=spec.padding if m != spec.num_tokens else "trailing",
            budgets=(k,),
        )
        try:
            one(alone, swept=True)
        except _Falsified as smaller:
            return smaller
    return failure


def run_check(
    strategy: Strategy,
    check: Check,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> CheckResult:
    """Run one check over generated contexts; skipped when the strategy's capabilities say so.

    For checks that draw budgets, the contexts of :func:`~.generators.budget_sweep` come first
    (every budget of every valid count up to 10, with the default 30 examples), then
    hypothesis draws the rest of ``max_examples``. Derandomized runs (the default) seed
    hypothesis with :func:`check_seed` of the check's name. Every context's tensors are built
    on ``device`` (``ctx.generator`` stays a CPU generator; budgets are CPU, as the contract
    says).
    """
    reason = check.skip_reason(strategy)
    if reason is not None:
        return CheckResult(strategy.name, check.name, "skipped", skip_reason=reason)
    runs = 0
    hyp = kit_settings(max_examples, settings)
    sweep = _sweep(strategy, check, max_examples, hyp.derandomize)
    if check.once:  # one fixed context: the sweep's largest batch
        seed_ = check_seed(check.name) if hyp.derandomize else None
        sweep = [max(budget_sweep(strategy.capabilities, seed_), key=lambda s: s.batch)]

    def one(spec: ContextSpec, swept: bool = False) -> None:
        nonlocal runs
        runs += 1
        ctx = build_context(spec, device)
        try:
            check.fn(strategy, ctx)
        except Exception as exc:
            raise _Falsified(spec, exc, swept) from exc

    @kit_settings(max(max_examples // 3, max_examples - round(SWEEP_COST * len(sweep)), 1), settings)
    @given(context_specs(strategy.capabilities, budget=check.budget))
    def run(spec: ContextSpec) -> None:
        one(spec)

    if hyp.derandomize:
        run = hypothesis_seed(check_seed(check.name))(run)
    try:
        with _one_thread(), _no_hypothesis_files():
            if not check.once:
                run()  # first, so that a failure hypothesis can find is shrunk
            for swept in sweep:
                try:
                    one(swept, swept=True)
                except _Falsified as failure:
                    raise _smaller(failure, one) from failure.error
    except _Falsified as failure:
        message = _failure_message(strategy, check, failure.error, failure.spec, failure.swept)
        return CheckResult(strategy.name, check.name, "failed", message=message, runs=runs)
    except Exception as exc:  # hypothesis' own verdicts (e.g. a flaky failure)
        inner = getattr(exc, "exceptions", None)
        first = inner[0] if inner else exc
        spec = first.spec if isinstance(first, _Falsified) else None
        error = first.error if isinstance(first, _Falsified) else exc
        message = _failure_message(strategy, check, f"{type(exc).__name__}: {error}", spec)
        return CheckResult(strategy.name, check.name, "failed", message=message, runs=runs)
    return CheckResult(strategy.name, check.name, "passed", runs=runs)


def _resolve(strategy_or_name: Strategy | str, params: Mapping[str, Any]) -> Strategy:
    if isinstance(strategy_or_name, str):
        return get_strategy(strategy_or_name, **params)
    if not isinstance(strategy_or_name, Strategy):
        raise TypeError(
            f"expected a vtprune.Strategy or a registered strategy name, got "
            f"{type(strategy_or_name).__name__}; build one with vtprune.get_strategy or compose"
        )
    if params:
        raise TypeError(
            f"parameters {sorted(params)} apply only to a strategy given by name; pass "
            "vtprune.get_strategy(name, **params) instead"
        )
    return strategy_or_name


def _select(checks: Iterable[str] | None) -> tuple[Check, ...]:
    if checks is None:
        return CHECKS
    table = {c.name: c for c in CHECKS + OPT_IN_CHECKS}
    unknown = [n for n in checks if n not in table]
    if unknown:
        raise UnknownNameError(f"unknown check(s) {unknown}; the kit's checks are {list(table)}")
    return tuple(table[n] for n in checks)


def check_strategy(
    strategy_or_name: Strategy | str,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    *,
    checks: Iterable[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    **params: Any,
) -> list[CheckResult]:
    """Run every named check (or those named in ``checks``) on a strategy.

    ``strategy_or_name`` is a :class:`~vtprune.core.Strategy` or a registered name (built
    with ``params``). ``settings`` overrides the kit's hypothesis settings (e.g.
    ``{"derandomize": False}``). ``device`` is where the generated contexts live (``"cuda"``,
    ``"mps"``, ...): the device clauses then check that scores, selection indices and
    replacement features come back on it. Returns one :class:`CheckResult` per check.
    """
    strategy = _resolve(strategy_or_name, params)
    dev = torch.device(device)
    return [run_check(strategy, c, max_examples, settings, dev) for c in _select(checks)]


def summarize(results: Sequence[CheckResult]) -> str:
    """``"<names>: P passed, F failed, S skipped"`` (one line)."""
    names = sorted({r.strategy for r in results})
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    return f"{', '.join(names)}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def assert_conforms(
    strategy_or_name: Strategy | str,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    **kwargs: Any,
) -> list[CheckResult]:
    """:func:`check_strategy`, raising one ``AssertionError`` that lists every failure."""
    results = check_strategy(strategy_or_name, max_examples, **kwargs)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        body = "\n\n".join(r.message for r in failed)
        raise AssertionError(f"vtprune conformance: {summarize(results)}\n\n{body}")
    return results


NEUTRAL = {"scorer": "constant", "allocator": "global", "selector": "topk"}
"""The partners :func:`check_stage` composes a single stage with (a selector gets the kit's
:func:`uneven_regions_allocator` instead of ``global``, see :func:`stage_strategy`)."""

def stage_strategy(
    kind: str,
    name: str,
    partners: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    **params: Any,
) -> Strategy:
    """A strategy made of the registered stage ``kind``/``name`` and neutral partners
    (``constant`` scorer, ``global`` allocator, ``topk`` selector unless ``partners`` says
    otherwise), looked up in ``registry`` (default: the process-wide one).

    A selector is tested against the kit's :func:`uneven_regions_allocator` (several regions,
    uneven quotas, some 0) unless ``partners`` names an allocator, so that its quota handling
    is exercised; a selector declaring ``capabilities.region_quotas=False`` (e.g. ``divprune``)
    gets the ``global`` allocator instead.
    """
    if kind not in NEUTRAL:
        raise UnknownNameError(f"unknown stage kind {kind!r}; choose from {list(NEUTRAL)}")
    stages = {**NEUTRAL, **(partners or {}), kind: name}
    unknown = set(stages) - set(NEUTRAL)
    if unknown:
        raise UnknownNameError(f"unknown partner kind(s) {sorted(unknown)}; choose from {list(NEUTRAL)}")
    registry = registry or default_registry()
    needs = frozenset().union(*(registry.spec(k, v).capabilities.needs for k, v in stages.items()))
    schedule: Callable[..., Schedule] | None = _kit_schedule if "attention" in needs else None
    try:
        strategy = registry.compose(
            stages["scorer"], stages["allocator"], stages["selector"],
            name=f"{kind}:{name}", schedule=schedule, **params,
        )
    except ContractError as err:
        raise ContractError(f"cannot build a strategy around {kind} {name!r}: {err}") from None
    takes_quotas = registry.spec("selector", stages["selector"]).capabilities.region_quotas
    if kind == "selector" and "allocator" not in (partners or {}) and takes_quotas:
        scorer_name, _, selector_name = strategy.stage_names
        strategy = replace(
            strategy,
            allocator=uneven_regions_allocator,
            stage_names=(scorer_name, "kit:uneven_regions", selector_name),
        )
    return strategy


def check_stage(
    kind: str,
    name: str,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    *,
    partners: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    checks: Iterable[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    **params: Any,
) -> list[CheckResult]:
    """Run the kit on one registered scorer, allocator or selector, composed with neutral
    partners (see :func:`stage_strategy`), on ``device``."""
    strategy = stage_strategy(kind, name, partners, registry, **params)
    return check_strategy(strategy, max_examples, checks=checks, settings=settings, device=device)


class KitCheck:
    """A check bound to kit settings, callable as ``check(strategy)`` inside a pytest test:
    it fails the test with the kit's message, or skips it with the capability reason."""

    def __init__(
        self,
        check: Check,
        max_examples: int,
        settings: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ):
        self.check = check
        self.max_examples = max_examples
        self.settings = settings
        self.device = device

    def __call__(self, strategy: Strategy) -> CheckResult:
        import pytest

        result = run_check(strategy, self.check, self.max_examples, self.settings, self.device)
        if result.status == "skipped":
            pytest.skip(result.skip_reason)
        if result.status == "failed":
            pytest.fail(result.message, pytrace=False)
        return result

    def __repr__(self) -> str:
        return self.check.name


def parametrize_with_checks(
    strategies: Iterable[Strategy | str],
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    *,
    checks: Iterable[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> Any:
    """``pytest.mark.parametrize("strategy, check", ...)``: one test per strategy x check,
    with ids ``<strategy>-<check>``. Names are built with :func:`vtprune.get_strategy`.
    Contexts are built on ``device``."""
    import pytest

    selected = _select(checks)
    cases = []
    for s in strategies:
        strategy = _resolve(s, {})
        for c in selected:
            cases.append(
                pytest.param(
                    strategy, KitCheck(c, max_examples, settings, device), id=f"{strategy.name}-{c.name}"
                )
            )
    return pytest.mark.parametrize("strategy, check", cases)


__all__ = [
    "DEFAULT_MAX_EXAMPLES",
    "NEUTRAL",
    "REGION_COUNT",
    "CheckResult",
    "KitCheck",
    "assert_conforms",
    "check_seed",
    "check_stage",
    "check_strategy",
    "kit_settings",
    "parametrize_with_checks",
    "run_check",
    "stage_strategy",
    "summarize",
    "uneven_regions_allocator",
]
