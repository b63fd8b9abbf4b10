"""Issue #12, the kit's new capabilities: each test feeds the kit a deliberately broken
strategy (or stage) that the kit as it was before the capability passed, and asserts that the
new kit catches it with the right named check. (Each was run against the old kit too: it
passed there, so these tests failed. Names the old kit lacks are imported inside the tests,
so that this module still imports against it.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import Phase

from vtprune.conformance_tests import check_stage, check_strategy
from vtprune.core import (
    Allocation,
    Capabilities,
    PruneContext,
    Registry,
    Selection,
    SelectorSpec,
    Strategy,
    hookimpl,
)
from vtprune.strategies import stages
from vtprune.strategies.stages import keep_top

pytest_plugins = ["pytester"]

NO_SHRINK = {"phases": [Phase.explicit, Phase.generate]}
"""Only *which* check fails matters here: shrinking is most of a failing check's time."""

norm_scorer = stages.make_feature_norm()
global_allocator = stages.make_global()
topk = stages.make_topk()


def make(name: str, scorer=None, allocator=None, selector=None, **caps) -> Strategy:
    return Strategy(
        name=name,
        scorer=scorer or norm_scorer,
        allocator=allocator or global_allocator,
        selector=selector or topk,
        capabilities=Capabilities(**caps),
    )


def failed(strategy: Strategy, examples: int = 30, **kwargs) -> dict[str, str]:
    """Failure message of every failing check, by check name."""
    results = check_strategy(strategy, examples, settings=NO_SHRINK, **kwargs)
    return {r.check: r.message for r in results if r.status == "failed"}


# -- (9) check_stage gives a selector several regions with uneven quotas -----------------------


def quota_blind_selector(ctx, scores, alloc):
    """Top-k over the whole sample: ignores regions and quotas (correct otherwise)."""
    return keep_top(scores, ctx, Allocation(alloc.budget))


class QuotaBlindPlugin:
    @hookimpl
    def vtprune_selectors(self):
        return [SelectorSpec("quota_blind", lambda: quota_blind_selector)]


def _registry() -> Registry:
    registry = Registry()
    registry.register(stages, name="stages")
    registry.register(QuotaBlindPlugin(), name="broken")
    return registry


def test_check_stage_catches_a_selector_that_ignores_quotas() -> None:
    results = check_stage("selector", "quota_blind", 20, registry=_registry(), settings=NO_SHRINK)
    bad = {r.check for r in results if r.status == "failed"}
    assert bad == {"check_selector_respects_quotas"}


def test_check_stage_passes_a_selector_that_honours_quotas() -> None:
    from vtprune.conformance_tests.runner import stage_strategy

    results = check_stage("selector", "topk", 20, registry=_registry())
    assert {r.status for r in results} == {"passed"}
    assert stage_strategy("selector", "topk", registry=_registry()).stage_names[1] == "kit:uneven_regions"


def test_uneven_regions_have_zero_partial_and_full_quotas() -> None:
    from vtprune.conformance_tests.runner import uneven_regions_allocator

    feats = torch.randn(3, 6 * 5, 4)
    valid = torch.ones(3, 30, dtype=torch.bool)
    valid[2, ::3] = False
    ctx = PruneContext.create(feats, (6, 5), keep=torch.tensor([7, 30, 13]), valid=valid)
    alloc = uneven_regions_allocator(ctx, torch.zeros(3, 30))
    assert alloc.quotas is not None and alloc.regions is not None
    sizes = alloc.region_sizes()
    assert alloc.quotas.sum(1).tolist() == [7, 30, 13]
    assert bool((alloc.quotas <= sizes).all())
    assert int(alloc.quotas[0, 0]) == 0 and bool((alloc.quotas[0] < sizes[0]).any())
    assert torch.equal(alloc.quotas[1], sizes[1])  # keep-all fills every region
    assert len(set(alloc.quotas[0].tolist())) > 2  # uneven
    assert bool((alloc.regions[2, ::3] == -1).all())


def test_a_selector_that_refuses_regions_keeps_the_global_allocator() -> None:
    from vtprune.conformance_tests.runner import stage_strategy, uneven_regions_allocator

    assert stage_strategy("selector", "divprune").stage_names[1] == "global"
    with pytest.raises(Exception):  # noqa: B017 - the probe's premise: divprune refuses regions
        ctx = PruneContext.create(torch.randn(1, 12, 3), (3, 4), keep=5)
        strategy = stage_strategy("selector", "divprune")
        scores = strategy.scorer(ctx)
        strategy.selector(ctx, scores, uneven_regions_allocator(ctx, scores))


# -- (1) every check its own seed, and every budget of small valid counts ----------------------


def small_lattice_selector(ctx, scores, alloc):
    """Top-k by score, except for samples with fewer than a dozen valid tokens, where scores
    say little: an even lattice over the valid tokens, every s-th with s = round(m / k),
    trimmed to k. The bug: round() instead of floor() gives fewer than k lattice points when
    m / k rounds up, e.g. (m, k) = (6, 4), (8, 5), (9, 6), (10, 6): a few budgets only."""
    sel = topk(ctx, scores, alloc)
    valid = ctx.valid_mask().cpu()
    rows = []
    for b, top in enumerate(sel.per_sample()):
        positions = valid[b].nonzero().flatten()
        m, k = len(positions), int(alloc.budget[b])
        if m >= 12 or k == 0:
            rows.append(top.cpu())
        else:
            rows.append(positions[:: max(1, round(m / k))][:k])
    return Selection.from_lists(rows)


def test_budget_sweep_catches_a_lattice_that_misses_a_few_budgets() -> None:
    from vtprune.conformance_tests.checks import ConformanceError, check_selection_contract
    from vtprune.conformance_tests.generators import budget_sweep, build_context

    strategy = make("small_lattice", selector=small_lattice_selector)
    assert set(failed(strategy)) == {"check_selection_contract"}
    # whatever hypothesis draws, the sweep alone catches it, with any seed
    for seed in range(5):
        caught = []
        for spec in budget_sweep(seed=seed):
            try:
                check_selection_contract(strategy, build_context(spec))
            except ConformanceError as err:
                caught.append(str(err))
        assert caught, seed


def test_each_check_draws_its_own_contexts_the_same_in_every_process() -> None:
    from vtprune.conformance_tests.runner import check_seed

    names = ["check_selection_contract", "check_deterministic"]
    assert check_seed(names[0]) != check_seed(names[1])
    assert check_seed("check_deterministic") == 0xD2623EE1425BDB4D  # SHA-256, not hash()


def test_the_sweep_covers_every_budget_of_every_small_valid_count() -> None:
    from vtprune.conformance_tests.generators import budget_sweep, build_context

    pairs = []
    for spec in budget_sweep(seed=7):
        ctx = build_context(spec)
        pairs += list(zip(ctx.valid_counts.tolist(), ctx.budget.tolist()))
    assert sorted(pairs) == [(m, k) for m in range(1, 11) for k in range(m + 1)]


# -- (3) in-LLM contexts, as the decoder adapter builds them -----------------------------------


def original_fraction_selector(ctx, scores, alloc):
    """Top-k, except at in-LLM points, where the author read "budgets are fractions of the
    original count" as "rescale the budget to the survivors": k = budget x valid / original.
    The budget is already the count to keep, so this keeps too few once tokens were pruned."""
    if ctx.layer is None:
        return topk(ctx, scores, alloc)
    n0 = ctx.original_count or ctx.num_tokens
    k = (alloc.budget * ctx.valid_counts / n0).round().long()
    return keep_top(scores, ctx, Allocation(k))


def test_kit_catches_a_selector_that_misreads_in_llm_budgets() -> None:
    bad = failed(make("original_fraction", selector=original_fraction_selector))
    assert "check_selection_contract" in bad
    assert set(bad) <= {"check_selection_contract", "check_keep_all_keeps_every_valid_token"}
    assert "in-LLM at layer" in bad["check_selection_contract"]


class _Recorder:
    """A pass-through scorer that records the contexts the adapter hands the strategy."""

    def __init__(self) -> None:
        self.contexts: list[PruneContext] = []

    def __call__(self, ctx: PruneContext) -> torch.Tensor:
        self.contexts.append(ctx)
        return ctx.attention.float().mean(1).masked_fill(~ctx.valid_mask(), 0.0)


def test_in_llm_specs_mirror_the_contexts_the_llava_adapter_builds() -> None:
    """The adapter's context at the second of two in-LLM prune points, next to the kit's."""
    from hypothesis import find, settings

    from vtprune import Schedule
    from vtprune.backbones import attach
    from vtprune.conformance_tests import build_context, context_specs
    from vtprune.models import build_tiny_llava, make_inputs

    model = build_tiny_llava()
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    inputs = make_inputs(model, images, ["what is in the picture?", "count"])
    recorder = _Recorder()
    needs = frozenset({"attention", "cls_attention", "image"})
    strategy = make("recorder", scorer=recorder, needs=needs)
    with attach(model, strategy, schedule=Schedule.at_layers([(1, 0.5), (2, 0.25)])), torch.no_grad():
        model(**inputs)
    real = recorder.contexts[-1]
    spec = find(
        context_specs(Capabilities(needs=needs)),
        lambda s: s.layer is not None and s.valid_counts is not None and s.batch > 1 and s.heads > 0,
        settings=settings(max_examples=2000, database=None, deadline=None),
    )
    kit = build_context(spec)
    for ctx in (real, kit):
        n = ctx.num_tokens
        assert isinstance(ctx.layer, int) and ctx.layer >= 1
        assert ctx.original_count == n and ctx.generator is None
        assert ctx.valid is not None and len(set(ctx.valid_counts.tolist())) == 1
        assert int(ctx.valid_counts[0]) < n and len(set(ctx.budget.tolist())) == 1
        assert bool((ctx.features[~ctx.valid] == 0).all())  # pruned tokens: zero features
        assert ctx.attention is not None and ctx.attention.dim() == 3
        assert bool((ctx.attention.permute(0, 2, 1)[~ctx.valid] == 0).all())
        assert ctx.cls_attention is not None and ctx.image is not None
        assert ctx.text_features is None
        # cls_attention is computed before the LLM, on the full grid: not zero on pruned tokens
        cls = ctx.cls_attention.reshape(ctx.batch_size, -1, n).sum(1)
        assert bool((cls[~ctx.valid] > 0).any())


# -- (2) device= : contexts on any device, outputs must come back on it ------------------------
# On this CPU-only machine no strategy can really be handed a CUDA tensor, so the device
# clauses are tested (a) directly, with a stand-in tensor that reports another device, and
# (b) end to end with stages that move their output to the "meta" device (a real torch device
# with no data, available everywhere). The accelerator runs below skip without a GPU / MPS.

ACCELERATORS = [
    d
    for d, ok in (
        ("cuda", torch.cuda.is_available()),
        ("mps", getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
    )
    if ok
]


class _OnDevice:
    """Stand-in for an output tensor that reports it lives on ``device``."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


def test_device_clause_names_an_output_on_another_device() -> None:
    from vtprune.conformance_tests.checks import ConformanceError, check_on_device

    ctx = PruneContext.create(torch.randn(1, 4, 2), (2, 2), keep=2)
    check_on_device("scores", torch.zeros(1, 4), ctx)  # same device: fine
    with pytest.raises(ConformanceError, match=r"selection.indices is on cuda:0, but the input .* is on cpu"):
        check_on_device("selection.indices", _OnDevice("cuda:0"), ctx)


def meta_scorer(ctx):
    """Computes its scores, then moves them elsewhere (here "meta"; on a GPU box, .cpu())."""
    return norm_scorer(ctx).to("meta")


def meta_indices_selector(ctx, scores, alloc):
    sel = topk(ctx, scores, alloc)
    return Selection(sel.indices.to("meta"), sel.counts)


def meta_merging_selector(ctx, scores, alloc):
    keep = topk(ctx, scores, alloc).token_mask(ctx.num_tokens)
    sel = Selection.from_mask(keep, features=ctx.features)
    assert sel.features is not None
    return Selection(sel.indices, sel.counts, sel.features.to("meta"))


@pytest.mark.parametrize(
    "strategy, check, what",
    [
        (make("meta_scores", scorer=meta_scorer), "check_scores_contract", "scores"),
        (make("meta_indices", selector=meta_indices_selector), "check_selection_contract", "selection.indices"),
        (
            make("meta_features", selector=meta_merging_selector, merges=True),
            "check_replacement_features",
            "selection.features",
        ),
    ],
    ids=["scores", "indices", "merged-features"],
)
def test_device_clauses_catch_outputs_moved_to_another_device(strategy, check, what) -> None:
    [result] = check_strategy(strategy, 5, checks=[check], settings=NO_SHRINK, device="cpu")
    assert result.status == "failed"
    assert f"{what} is on meta, but the input (ctx.features) is on cpu" in result.message


@pytest.mark.parametrize("device", ACCELERATORS or [pytest.param("none", marks=pytest.mark.skip("no accelerator"))])
def test_registered_strategies_conform_on_every_accelerator(device) -> None:
    import vtprune

    for name in vtprune.list_strategies():
        results = check_strategy(name, 15, device=device)
        failures = [r.message for r in results if r.status == "failed"]
        assert not failures, "\n\n".join(failures)


def test_contexts_are_built_on_the_requested_device() -> None:
    from vtprune.conformance_tests import ContextSpec, build_context

    # "meta" holds no data, so only a context PruneContext can validate without reading values
    ctx = build_context(ContextSpec(batch=2, grid=(2, 3), budgets=(2, 1)), "meta")
    assert ctx.features.device.type == "meta"
    assert ctx.budget.device.type == "cpu"  # budgets are CPU by contract


# -- (7) images of any size per cell and any value range ---------------------------------------

IMAGE = frozenset({"image"})


def cell_brightness_scorer(ctx):
    """Mean brightness of each grid cell's pixels. The bug: it reshapes the image into cells,
    assuming the image is an integer number of pixels per cell (14 for CLIP ViT-L/14)."""
    img = ctx.image
    b, c, hh, ww = img.shape
    h, w = ctx.grid
    cells = img.reshape(b, c, h, hh // h, w, ww // w)  # fails unless h | H and w | W
    return cells.float().mean(dim=(1, 3, 5)).reshape(b, h * w).masked_fill(~ctx.valid_mask(), 0.0)


def gamma_scorer(ctx):
    """Perceived luminance per cell, decoding sRGB gamma with x ** 2.2. The bug: assumes pixels
    in [0, 1]; CLIP-normalised pixels are negative and give NaN."""
    h, w = ctx.grid
    lum = (ctx.image.float() ** 2.2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
    cells = torch.nn.functional.adaptive_avg_pool2d(lum, (h, w)).flatten(1)  # [B, N]
    return cells.masked_fill(~ctx.valid_mask(), 0.0)


def test_kit_catches_a_scorer_that_assumes_whole_pixels_per_cell() -> None:
    bad = failed(make("cell_brightness", scorer=cell_brightness_scorer, needs=IMAGE))
    assert "check_scores_contract" in bad and "the scorer raised RuntimeError" in bad["check_scores_contract"]


def test_kit_catches_a_scorer_that_assumes_pixels_in_unit_range() -> None:
    bad = failed(make("gamma", scorer=gamma_scorer, needs=IMAGE))
    assert "check_scores_contract" in bad and "finite on valid tokens" in bad["check_scores_contract"]


def test_generated_images_vary_size_per_cell_and_value_range() -> None:
    from hypothesis import find, settings

    from vtprune.conformance_tests import build_context, context_specs

    quick = settings(max_examples=2000, database=None, deadline=None)
    specs = context_specs(IMAGE)
    spec = find(specs, lambda s: s.px_per_cell == 10.5 and s.grid[0] % 2 == 1, settings=quick)
    assert build_context(spec).image.shape[2] == round(spec.grid[0] * 10.5)  # not a multiple of h
    clip = build_context(find(specs, lambda s: s.image_range == "clip", settings=quick)).image
    assert clip is not None and float(clip.min()) < 0
    byte = build_context(find(specs, lambda s: s.image_range == "byte", settings=quick)).image
    assert byte is not None and float(byte.max()) > 1


# -- (6) realistic feature scales ---------------------------------------------------------------


def naive_softmax_scorer(ctx):
    """Softmax over tokens of each token's similarity to the sample mean, without subtracting
    the max. Fine on unit-scale features (logits of a few units, computed in float32); with
    hidden-state norms in the hundreds exp overflows to inf, and inf / inf is NaN."""
    f = ctx.features.float()  # [B, N, D]
    valid = ctx.valid_mask()
    mean = (f * valid[..., None]).sum(1, keepdim=True) / valid.sum(1, keepdim=True)[..., None].clamp_min(1)
    logits = (f * mean).sum(-1) / f.shape[-1] ** 0.5  # [B, N]
    e = logits.exp() * valid
    return e / e.sum(1, keepdim=True).clamp_min(1e-12)


def test_kit_catches_a_naive_softmax_that_overflows_on_real_feature_scales() -> None:
    bad = failed(make("naive_softmax", scorer=naive_softmax_scorer))
    assert "check_scores_contract" in bad and "finite on valid tokens" in bad["check_scores_contract"]


def test_hidden_features_have_norms_in_the_hundreds() -> None:
    from vtprune.conformance_tests import ContextSpec, build_context

    for dtype in ("float32", "bfloat16", "float16"):
        f = build_context(ContextSpec(grid=(4, 4), dim=8, features="hidden", dtype=dtype)).features
        norms = f.float().norm(dim=-1)
        assert bool(torch.isfinite(f).all()) and float(norms.min()) > 100


# -- (4) determinism across interpreters --------------------------------------------------------
# Module-level stage functions: the fresh interpreter unpickles the strategy by reference.


def hash_seeded_scorer(ctx):
    """Random tie-breaking scores from a generator seeded with hash() of a string: the same
    in every run of one process (check_deterministic passes), different in another process
    (PYTHONHASHSEED salts str hashes)."""
    g = torch.Generator().manual_seed(hash("my-plugin") & 0xFFFF_FFFF)
    b, n = ctx.features.shape[:2]
    noise = torch.rand(n, generator=g).expand(b, n)  # one draw per token: batch-consistent
    return noise.to(ctx.features.device).masked_fill(~ctx.valid_mask(), 0.0)


def module_norm_scorer(ctx):
    return norm_scorer(ctx)


def module_global_allocator(ctx, scores):
    return global_allocator(ctx, scores)


def module_topk(ctx, scores, alloc):
    return topk(ctx, scores, alloc)


def _picklable(name: str, scorer) -> Strategy:
    return Strategy(name, scorer, module_global_allocator, module_topk, Capabilities())


FRESH = "check_deterministic_across_processes"


def test_kit_catches_a_strategy_seeded_from_hash_of_a_string() -> None:
    strategy = _picklable("hash_seeded", hash_seeded_scorer)
    # the default run sees it through its persistent second interpreter, and only there
    assert set(failed(strategy)) == {"check_hash_seed_independent"}
    [result] = check_strategy(strategy, checks=[FRESH])
    assert result.status == "failed" and "a fresh interpreter (other PYTHONHASHSEED) differs" in result.message


def test_fresh_interpreter_check_passes_a_picklable_strategy_and_a_registered_one() -> None:
    [mine] = check_strategy(_picklable("module_norm", module_norm_scorer), checks=[FRESH])
    [altp] = check_strategy("altp", checks=[FRESH])
    assert (mine.status, altp.status) == ("passed", "passed"), (mine.message, altp.message)
    assert mine.runs == 1


def test_fresh_interpreter_check_is_opt_in() -> None:
    from vtprune.conformance_tests import CHECKS

    assert FRESH not in {c.name for c in CHECKS}


def test_pytest_option_passes_the_device_to_the_checks(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider",
        "--vtprune-conformance=uniform", "--vtprune-conformance-examples=3",
        "--vtprune-conformance-device=meta", "-k", "check_scores_contract",
    )
    # uniform's scorer reads values, which a data-less meta context cannot give: the device
    # reached the checks (on CPU the item passes; here it fails building or scoring)
    from vtprune.conformance_tests import CHECKS

    result.assert_outcomes(failed=1, deselected=len(CHECKS) - 1)  # every other default check
    cpu = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider",
        "--vtprune-conformance=uniform", "--vtprune-conformance-examples=3",
        "--vtprune-conformance-device=cpu", "-k", "check_scores_contract",
    )
    cpu.assert_outcomes(passed=1, deselected=len(CHECKS) - 1)
