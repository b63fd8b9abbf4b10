"""ALTP: superpixels on the token grid, DDC/DDF quota rules, the spread selector, strategies."""

from __future__ import annotations

import altp_reference
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vtprune
from vtprune.core import ContractError
from vtprune.strategies import altp, farthest, superpixels
from vtprune.strategies.superpixels import labels_to_grid, relabel, token_regions

HAS_FAST_SLIC = superpixels.fast_slic_available()


def _object_image(size: int = 336) -> torch.Tensor:
    """Grey background with a small red square (one token patch) and a large blue block."""
    img = torch.full((3, size, size), 0.5)
    p = size // 24
    img[:, 5 * p : 6 * p, 17 * p : 18 * p] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    img[:, 14 * p :, : 10 * p] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    return img


# -- superpixels ---------------------------------------------------------------------------------


def test_labels_to_grid_majority_with_integer_patches():
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[0, 0:3] = 1  # 3 of 4 pixels of patch (0, 0) are label 1, 1 of patch (0, 1)
    labels[1, 0] = 1
    out = labels_to_grid(labels, (2, 2))
    assert out.tolist() == [1, 0, 0, 0]


def test_labels_to_grid_splits_pixel_area_for_fractional_patches():
    # 3 pixels onto 2 patches: the middle pixel is half in each patch.
    labels = np.array([[0, 1, 1]])
    out = labels_to_grid(labels, (1, 2))
    # patch 0 = pixel 0 (1.0 of label 0) + half of pixel 1 (0.5 of label 1) -> label 0
    assert out.tolist() == [0, 1]
    labels = np.array([[1, 0, 1]])
    assert labels_to_grid(labels, (1, 2)).tolist() == [1, 1]


def test_labels_to_grid_upsamples_label_maps_smaller_than_the_grid():
    out = labels_to_grid(np.array([[0, 1], [2, 3]]), (4, 6))
    grid = out.reshape(4, 6)
    assert grid[0, 0] == 0 and grid[0, 5] == 1 and grid[3, 0] == 2 and grid[3, 5] == 3


def test_relabel_is_contiguous_in_raster_order_and_marks_invalid():
    regions = torch.tensor([7, 7, 3, 9, 3, 5])
    valid = torch.tensor([True, True, True, True, True, False])
    assert relabel(regions, valid).tolist() == [0, 0, 1, 2, 1, -1]


def test_relabel_matches_first_appearance_rule_on_random_ids():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        regions = torch.randint(0, 12, (50,), generator=gen) * 3
        valid = torch.rand(50, generator=gen) > 0.3
        out = relabel(regions, valid)
        first: dict[int, int] = {}
        for rid in regions[valid].tolist():
            first.setdefault(rid, len(first))
        expect = [first[int(r)] if bool(v) else -1 for r, v in zip(regions, valid)]
        assert out.tolist() == expect and out.dtype == regions.dtype


def test_normalise_image_channels_last_matches_reference():
    img = torch.rand(3, 30, 42, generator=torch.Generator().manual_seed(1)) * 4 - 1
    for factor in (1, 2, 3):
        x = superpixels.downscale(img.numpy(), factor)
        lo, hi = float(x.min()), float(x.max())
        ref = np.clip((x - lo) * np.float32(255.0 / (hi - lo)) + np.float32(0.5), 0, 255).astype(np.uint8)
        assert np.array_equal(superpixels.normalise_image(img, factor), ref.transpose(1, 2, 0))
    grey = superpixels.normalise_image(img[:1], 2)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])


def test_normalise_image_any_range_and_channels():
    img = torch.tensor([[[-3.0, 1.0], [5.0, 1.0]]])  # one channel, odd range
    out = superpixels.normalise_image(img)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert superpixels.normalise_image(torch.full((3, 4, 4), 7.0)).max() == 0
    before = img.clone()
    superpixels.normalise_image(img)
    assert torch.equal(img, before)


@pytest.mark.parametrize("backend", ["skimage", "fast_slic"])
def test_backends_agree_in_kind(backend):
    if backend == "fast_slic" and not HAS_FAST_SLIC:
        pytest.skip("fast-slic not installed")
    img = _object_image()
    regions = token_regions(img, (24, 24), 16, backend=backend)
    assert regions.shape == (576,) and regions.dtype == torch.long
    r = int(regions.max()) + 1
    assert 2 <= r <= 64
    assert set(regions.unique().tolist()) == set(range(r))
    # the big blue block and the grey background never share a region
    grid = regions.view(24, 24)
    assert grid[20, 2] != grid[2, 2]


def test_auto_uses_fast_slic_when_installed_and_skimage_can_be_forced(monkeypatch):
    assert superpixels.resolve_backend("auto") == ("fast_slic" if HAS_FAST_SLIC else "skimage")
    assert superpixels.resolve_backend("skimage") == "skimage"
    calls = []
    real = superpixels._SLIC["skimage"]
    monkeypatch.setitem(superpixels._SLIC, "skimage", lambda *a: calls.append(1) or real(*a))
    strategy = vtprune.get_strategy("altp", backend="skimage")
    ctx = vtprune.PruneContext.create(torch.randn(1, 576, 8), keep=0.1, image=_object_image()[None])
    assert strategy(ctx).counts.tolist() == [58]
    assert calls, "backend='skimage' did not run scikit-image's SLIC"
    if HAS_FAST_SLIC:  # "auto" runs fast-slic, not scikit-image
        fast_calls = []
        real_fast = superpixels._SLIC["fast_slic"]
        monkeypatch.setitem(superpixels._SLIC, "fast_slic", lambda *a: fast_calls.append(1) or real_fast(*a))
        calls.clear()
        assert vtprune.get_strategy("altp")(ctx).counts.tolist() == [58]
        assert fast_calls and not calls


def test_missing_named_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(superpixels, "_fast_slic_class", lambda: None)
    assert superpixels.resolve_backend("auto") == "skimage"
    with pytest.raises(ContractError, match="fast-slic"):
        vtprune.get_strategy("altp", backend="fast_slic")
    with pytest.raises(ContractError, match="backend must be one of"):
        vtprune.get_strategy("altp", backend="opencv")


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (14, 14), (20, 9)])
def test_tiny_images_do_not_crash_slic(size):
    img = torch.rand(3, *size)
    for backend in ["skimage"] + (["fast_slic"] if HAS_FAST_SLIC else []):
        regions = token_regions(img, (4, 3), 6, backend=backend)
        assert regions.shape == (12,) and int(regions.min()) == 0


# -- quota arithmetic ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    dens=st.lists(st.floats(0, 5, allow_nan=False), min_size=12, max_size=12),
    frac=st.floats(0, 1),
    min_quota=st.integers(0, 3),
    mode=st.sampled_from(["mass", "size"]),
)
def test_quotas_exact_capped_and_minimum_guaranteed(sizes, dens, frac, min_quota, mode):
    sizes = np.array(sizes)
    density = np.array(dens[: len(sizes)])
    budget = int(round(frac * sizes.sum()))
    q = altp_reference.allocate_quotas(sizes, density, budget, min_quota, mode)
    assert q.sum() == budget
    assert (q >= 0).all() and (q <= sizes).all()
    base = np.minimum(min_quota, sizes)
    if base.sum() <= budget:  # DDC: every non-empty region keeps its minimum
        assert (q >= base).all()
    else:  # regions outnumber the budget: no region beyond its minimum
        assert (q <= base).all()


def test_when_regions_outnumber_the_budget_the_densest_win():
    sizes = np.array([4, 4, 4, 4, 4])
    density = np.array([0.1, 0.9, 0.5, 0.8, 0.2])
    q = altp_reference.allocate_quotas(sizes, density, 3, 1)
    assert q.tolist() == [0, 1, 1, 1, 0]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 10),
    size=st.integers(1, 20),
    dens=st.lists(st.floats(0, 10, allow_nan=False), min_size=10, max_size=10),
    frac=st.floats(0, 1),
)
def test_ddf_quotas_are_monotone_in_density(n, size, dens, frac):
    sizes = np.full(n, size)
    density = np.array(dens[:n])
    budget = int(round(frac * sizes.sum()))
    q = altp_reference.allocate_quotas(sizes, density, budget, 1, "mass")
    order = np.argsort(density, kind="stable")
    for lo, hi in zip(order[:-1], order[1:]):
        if density[hi] > density[lo]:
            assert q[hi] >= q[lo], (density, q)


def test_ddf_gives_more_to_the_denser_region_and_redistributes_overflow():
    # region 0 is tiny but dense: capped at its size, the overflow goes to the others
    q = altp_reference.allocate_quotas(np.array([2, 10, 10]), np.array([100.0, 1.0, 3.0]), 12, 1, "mass")
    assert q.tolist()[0] == 2 and q.sum() == 12 and q[2] > q[1]


def test_dispersion_is_zero_for_identical_tokens_and_grows_with_spread():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])
    regions = torch.tensor([0, 0, 0, 1, 1, 1])
    d = altp_reference.dispersion(f, regions, 2)
    assert d[0] == pytest.approx(0.0, abs=1e-6) and d[1] > 0.1


@pytest.mark.parametrize("chunk_bytes", [None, 1])  # default chunks; one sample per chunk
def test_batched_dispersion_equals_each_sample_alone(monkeypatch, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(altp, "CPU_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(5)
    b, n, r = 5, 60, 7
    feats = torch.randn(b, n, 24, generator=g) * torch.rand(b, n, 1, generator=g) * 50
    regions = torch.randint(-1, r, (b, n), generator=g)
    ctx = vtprune.PruneContext.create(feats, grid=(6, 10), keep=0.5)
    got = altp.region_density_batched("dispersion", ctx, regions, r, torch.zeros(b, n))
    for i in range(b):
        want = altp_reference.dispersion(feats[i], regions[i], r)
        assert torch.equal(got[i], want), i


# -- allocators and selector on contexts ---------------------------------------------------------


def _ctx(keep=0.1, valid=None, features=None, image=None):
    feats = torch.randn(1, 576, 16, generator=torch.Generator().manual_seed(0)) if features is None else features
    img = _object_image()[None] if image is None else image
    return vtprune.PruneContext.create(feats, keep=keep, valid=valid, image=img)


@pytest.mark.parametrize("name", ["ddc", "ddf"])
def test_every_region_keeps_a_token_while_the_budget_allows(name):
    strategy = vtprune.compose("distinct", name, "spread", n_segments=20)
    ctx = _ctx(keep=0.1)
    alloc = strategy.allocator(ctx, strategy.scorer(ctx))
    r = int(alloc.regions.max()) + 1
    assert r <= 58
    kept = strategy(ctx).token_mask(576)[0]
    per_region = torch.bincount(alloc.regions[0][kept], minlength=r)
    assert bool((per_region >= 1).all())


def _patch_colours(img: torch.Tensor) -> torch.Tensor:
    """Stand-in token features: mean colour of each 14 x 14 patch, [1, 576, 3]."""
    return torch.nn.functional.avg_pool2d(img[None], 14).flatten(2).transpose(1, 2)


def test_altp_keeps_the_small_object_that_uniform_misses():
    img = _object_image()
    feats = _patch_colours(img) + 0.01 * torch.randn(1, 576, 3, generator=torch.Generator().manual_seed(0))
    ctx = _ctx(keep=0.05, features=feats)  # 29 tokens
    red = {5 * 24 + 17}
    kept_altp = set(vtprune.get_strategy("altp")(ctx).indices[0].tolist())
    kept_uniform = set(vtprune.get_strategy("uniform")(ctx).indices[0].tolist())
    assert red & kept_altp
    assert not red & kept_uniform


def test_gradient_density_favours_the_textured_half():
    img = torch.full((1, 3, 336, 336), 0.1)  # flat dark left half, bright noisy right half
    img[0, :, :, 168:] = 0.6 + 0.4 * torch.rand(3, 336, 168, generator=torch.Generator().manual_seed(1))
    strategy = vtprune.get_strategy("altp", density="gradient", n_segments=8)
    kept = strategy(_ctx(keep=0.2, image=img)).indices[0]
    right = int(((kept % 24) >= 12).sum())
    assert right > len(kept) - right


def test_partly_valid_grid_regions_and_selection():
    valid = torch.zeros(1, 576, dtype=torch.bool)
    valid[0, ::3] = True  # an in-LLM prune point: two thirds already pruned
    ctx = _ctx(keep=40, valid=valid)
    strategy = vtprune.get_strategy("altp")
    alloc = strategy.allocator(ctx, strategy.scorer(ctx))
    assert bool((alloc.regions[~valid] == -1).all()) and bool((alloc.regions[valid] >= 0).all())
    sel = strategy(ctx)
    assert sel.counts.tolist() == [40]
    assert bool(valid[0, sel.indices[0]].all())


def test_spread_picks_one_token_per_feature_cluster():
    # one region, two clusters of features; quota 2 -> one from each cluster
    f = torch.zeros(1, 16, 4)
    f[0, :12, 0] = 1.0
    f[0, 12:, 1] = 1.0
    f += 0.01 * torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(0))
    ctx = vtprune.PruneContext.create(f, keep=2)
    sel = vtprune.compose("constant", "global", "spread")(ctx)
    picks = sel.indices[0].tolist()
    assert sum(p >= 12 for p in picks) == 1


def test_spread_honours_quotas_exactly():
    regions = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, -1]])
    quotas = torch.tensor([[2, 1, 2]])
    taken = altp.farthest_point_groups(torch.randn(1, 9, 3), regions, quotas, torch.zeros(1, 9))
    assert torch.bincount(regions[0][taken[0]], minlength=3).tolist() == [2, 1, 2]
    assert not bool(taken[0, 8])


def test_bad_parameters_are_rejected_with_the_expected_values():
    with pytest.raises(ContractError, match="density must be one of"):
        vtprune.get_strategy("altp", density="entropy")
    with pytest.raises(ContractError, match="n_segments"):
        vtprune.get_strategy("altp", n_segments=0)
    with pytest.raises(ContractError, match="min_quota"):
        vtprune.get_strategy("altp", min_quota=-1)
    with pytest.raises(vtprune.core.MissingSignalError, match="needs the context signal"):
        vtprune.get_strategy("altp")(vtprune.PruneContext.create(torch.randn(1, 16, 4), keep=4))


def test_altp_is_deterministic_and_leaves_inputs_alone():
    ctx = _ctx(keep=0.1)
    before = (ctx.features.clone(), ctx.image.clone())
    a = vtprune.get_strategy("altp")(ctx)
    b = vtprune.get_strategy("altp")(ctx)
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(before[0], ctx.features) and torch.equal(before[1], ctx.image)


@pytest.mark.parametrize("name", ["altp", "altp_ddc", "fastv_ddf", "ddc_attention", "altp_pdrop"])
def test_conformance_kit(name):
    kit = pytest.importorskip("vtprune.conformance_tests")
    results = kit.check_strategy(name, max_examples=15)
    failed = [r for r in results if r.status == "failed"]
    assert not failed, "\n".join(r.message for r in failed)


def test_overhead_benchmark_rows_time_both_slic_backends():
    from vtprune.bench.overhead import format_table, run_overhead

    rows = run_overhead(["altp", "uniform"], quick=True, repeats=1, warmup=0, dim=16)
    backends = {(r["strategy"], r["backend"]) for r in rows}
    assert ("uniform", "-") in backends and ("altp", "skimage") in backends
    assert ("altp", "fast_slic") in backends or not HAS_FAST_SLIC
    assert all(r["tokens"] == 576 and r["kept"] == 58 and r["median_ms"] > 0 for r in rows)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| altp | 1 | 576 |" in table


# -- the shared farthest-point kernel (farthest.py) -------------------------------------------------


def _brute_force_fps(unit: torch.Tensor, quota: int, first: int) -> list[int]:
    """Definition in float64: next pick = largest distance to the nearest pick, ties -> earlier row."""
    u = unit.double()
    chosen = [first]
    while len(chosen) < quota:
        mind = (1.0 - u @ u[chosen].T).min(dim=1).values
        mind[chosen] = float("-inf")
        chosen.append(int(mind.argmax()))
    return chosen


@pytest.mark.parametrize("ratio", [0, 10**9])  # 0: matrix-vector path only; huge: Gram path only
def test_farthest_points_follows_the_definition_on_both_paths(monkeypatch, ratio):
    monkeypatch.setattr(farthest, "GRAM_RATIO", ratio)
    gen = torch.Generator().manual_seed(0)
    for s, d, quota in [(7, 3, 7), (40, 16, 9), (120, 32, 30), (5, 2, 1), (6, 4, 0)]:
        unit = farthest.unit_rows(torch.randn(s, d, generator=gen))
        first = s // 2
        got = farthest.farthest_points(unit, quota, first).tolist()
        assert got == _brute_force_fps(unit, quota, first)[:quota]
        assert len(set(got)) == quota


def test_unit_rows_is_a_new_tensor_and_tames_non_finite_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [float("nan"), 1.0], [float("inf"), 2.0], [1e30, 1e30]])
    before = x.clone()
    u = farthest.unit_rows(x)
    assert torch.equal(x.nan_to_num(), before.nan_to_num())  # input untouched
    assert u.data_ptr() != x.data_ptr() and u.dtype == torch.float32
    assert torch.isfinite(u).all()
    assert torch.allclose(u[0], torch.tensor([0.6, 0.8]))
    assert u[1].abs().sum() == 0 and torch.allclose(u[2], torch.tensor([0.0, 1.0]))
    assert torch.allclose(u[3], torch.tensor([0.0, 1.0]))  # inf entry counts as 0
    assert torch.allclose(u[4], torch.tensor([0.5**0.5, 0.5**0.5]))  # overflowing norm: rescaled
    rows = farthest.unit_rows(x, torch.tensor([4, 0]))
    assert torch.allclose(rows[1], u[0]) and torch.equal(x.nan_to_num(), before.nan_to_num())


def test_spread_tie_rules_priority_then_lower_index():
    # region 0: tokens 0..5; tokens 1, 3 and 4 are identical and far from the rest
    f = torch.zeros(1, 6, 3)
    f[0, :, 0] = 1.0
    f[0, [1, 3, 4], 1] = 5.0
    regions = torch.zeros(1, 6, dtype=torch.long)
    prio = torch.tensor([[9.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    taken = altp.farthest_point_groups(f, regions, torch.tensor([[2]]), prio)
    assert taken[0].nonzero().squeeze(1).tolist() == [0, 1]  # first = best score; tie -> lower index
    prio[0, 4] = 1.0
    taken = altp.farthest_point_groups(f, regions, torch.tensor([[2]]), prio)
    assert taken[0].nonzero().squeeze(1).tolist() == [0, 4]  # tie on distance -> higher score


def test_spread_rejects_quotas_above_region_size():
    regions = torch.tensor([[0, 0, 1, -1]])
    with pytest.raises(ContractError, match="quota"):
        altp.farthest_point_groups(torch.randn(1, 4, 2), regions, torch.tensor([[1, 2]]), torch.zeros(1, 4))


def test_spread_and_divprune_alone_equal_in_a_batch_with_ragged_validity():
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(3, 36, 8, generator=gen).round()  # rounded: many tied distances
    valid = torch.rand(3, 36, generator=gen) > 0.3
    for strat in (vtprune.get_strategy("divprune"), vtprune.compose("distinct", "global", "spread")):
        batch = strat(vtprune.PruneContext.create(feats, keep=5, valid=valid))
        for b in range(3):
            alone = strat(vtprune.PruneContext.create(feats[b : b + 1], keep=5, valid=valid[b : b + 1]))
            assert alone.indices[0].tolist() == batch.indices[b].tolist()


def test_spread_keeps_whole_regions_when_the_quota_is_their_size():
    regions = torch.tensor([[0, 1, 0, 1, 1, 2, -1, 2]])
    taken = altp.farthest_point_groups(torch.randn(1, 8, 4), regions, torch.tensor([[2, 1, 2]]), torch.randn(1, 8))
    assert taken[0].tolist() == [True, taken[0, 1].item(), True, taken[0, 3].item(), taken[0, 4].item(), True, False, True]
    assert int(taken[0, [1, 3, 4]].sum()) == 1
