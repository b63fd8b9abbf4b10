"""The batched torch SLIC backend (vtprune.strategies.slic_torch) and token_regions_batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import vtprune
from vtprune.core import ContractError
from vtprune.strategies import slic_torch, superpixels
from vtprune.strategies.superpixels import labels_to_grid, relabel, token_regions_batch


def _scene_batch(bsz: int, side: int = 96, seed: int = 0) -> torch.Tensor:
    """Smooth colour noise with a few flat rectangles: [B, 3, side, side] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(bsz, 3, side, side, generator=g), 7, 1, 3)
    for b in range(bsz):
        for _ in range(3):
            y0, x0 = (int(v) for v in torch.randint(0, side - 20, (2,), generator=g))
            x[b, :, y0 : y0 + 16, x0 : x0 + 16] = torch.rand(3, 1, 1, generator=g)
    return x


def _assert_contiguous(regions: torch.Tensor, valid: torch.Tensor) -> None:
    for row, ok in zip(regions, valid):
        assert (row[~ok] == -1).all()
        ids = row[ok]
        if ids.numel():
            first = [int(v) for v in dict.fromkeys(ids.tolist())]
            assert first == list(range(len(first))), "ids must be 0..R-1 in order of first appearance"


def test_torch_backend_shape_device_contract():
    imgs = _scene_batch(3)
    valid = torch.ones(3, 144, dtype=torch.bool)
    valid[1, 100:] = False
    before = imgs.clone()
    out = token_regions_batch(imgs, (12, 12), [36, 18, 7], valid, backend="torch")
    assert out.shape == (3, 144) and out.dtype == torch.long and out.device == imgs.device
    _assert_contiguous(out, valid)
    assert torch.equal(imgs, before), "the images must not be modified"
    counts = [int(r.max()) + 1 for r in out]
    assert counts[0] > counts[1] > counts[2] >= 2, f"more segments asked must give more regions: {counts}"


def test_sample_alone_equals_sample_in_batch_with_other_segment_counts():
    imgs = _scene_batch(4, seed=1)
    valid = torch.rand(4, 144, generator=torch.Generator().manual_seed(2)) > 0.2
    segs = [40, 5, 18, 72]
    batch = token_regions_batch(imgs, (12, 12), segs, valid, backend="torch")
    for b in range(4):
        alone = token_regions_batch(imgs[b : b + 1], (12, 12), [segs[b]], valid[b : b + 1], backend="torch")
        assert torch.equal(alone[0], batch[b]), f"sample {b} depends on its batch-mates"
    again = token_regions_batch(imgs, (12, 12), segs, valid, backend="torch")
    assert torch.equal(again, batch), "not deterministic"


def test_pixel_labels_alone_equal_labels_in_a_padded_batch():
    lab = slic_torch.rgb255_to_lab(slic_torch.normalise_batch(_scene_batch(3, seed=4)))
    both = slic_torch.slic_batch(lab, [9, 50, 20])
    ny, nx = slic_torch.centre_grid(96, 96, 50)
    for b, k in enumerate([9, 50, 20]):
        alone = slic_torch.slic_batch(lab[b : b + 1], [k])[0]
        gy, gx = slic_torch.centre_grid(96, 96, k)
        # same partition; ids differ only by the padded grid width
        remap = (alone // gx) * nx + alone % gx
        assert torch.equal(remap, both[b])


@settings(max_examples=60, deadline=None)
@given(
    bsz=st.integers(1, 3),
    n=st.integers(1, 40),
    top=st.integers(0, 60),
    seed=st.integers(0, 2**16),
)
def test_relabel_batch_equals_numpy_relabel(bsz, n, top, seed):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randint(0, top + 1, (bsz, n), generator=g)
    valid = torch.rand(bsz, n, generator=g) > 0.3
    out = slic_torch.relabel_batch(regions, valid)
    for b in range(bsz):
        assert torch.equal(out[b], relabel(regions[b], valid[b]))


@settings(max_examples=60, deadline=None)
@given(
    hw=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    grid=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    labels=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_grid_majority_equals_labels_to_grid(hw, grid, labels, seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, labels, (2, *hw), generator=g)
    out = slic_torch.grid_majority(lab, grid, labels)
    for b in range(2):
        # labels_to_grid answers in dense ids (np.unique order) when labels are large for
        # the map; compare in those ids
        uniq, dense = np.unique(lab[b].numpy(), return_inverse=True)
        want = labels_to_grid(dense.reshape(hw), grid)
        assert np.array_equal(np.searchsorted(uniq, out[b].numpy()), want)


def test_grid_majority_integer_patch_fast_path_equals_numpy():
    lab = torch.randint(0, 30, (2, 168, 168), generator=torch.Generator().manual_seed(0))
    out = slic_torch.grid_majority(lab, (24, 24), 30)
    for b in range(2):
        assert np.array_equal(out[b].numpy(), labels_to_grid(lab[b].numpy(), (24, 24)))


class _CountSyncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _CountHostCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bsz", [1, 4])
def test_torch_path_makes_no_host_synchronisation(bsz):
    imgs = _scene_batch(bsz)
    valid = torch.ones(bsz, 144, dtype=torch.bool)
    segs = [36, 7, 18, 50][:bsz]
    with _CountHostCalls() as calls, _CountSyncs() as syncs:
        token_regions_batch(imgs, (12, 12), segs, valid, backend="torch")
    assert (syncs.count, calls.count) == (0, 0)


def test_counters_do_catch_a_sync():
    with _CountHostCalls() as calls, _CountSyncs() as syncs:
        torch.ones(2).sum().item()
    assert syncs.count == 1 and calls.count == 1


def test_cpu_backends_copy_to_the_host_once_per_call_not_per_sample():
    counts = []
    for bsz in (1, 4):
        imgs, valid = _scene_batch(bsz), torch.ones(bsz, 144, dtype=torch.bool)
        with _CountHostCalls() as calls, _CountSyncs() as syncs:
            token_regions_batch(imgs, (12, 12), [18] * bsz, valid, backend="skimage")
        counts.append(calls.count + syncs.count)
    assert counts[0] == counts[1] <= 2, f"host calls at batch 1 and 4: {counts}"


def test_cpu_backends_agree_with_per_sample_token_regions():
    imgs = _scene_batch(2)
    valid = torch.ones(2, 144, dtype=torch.bool)
    out = token_regions_batch(imgs, (12, 12), [18, 7], valid, backend="skimage")
    for b, k in enumerate([18, 7]):
        assert torch.equal(out[b], superpixels.token_regions(imgs[b], (12, 12), k, valid[b], backend="skimage"))


def test_token_regions_with_torch_backend_is_the_batched_path_for_one_image():
    imgs = _scene_batch(2)
    valid = torch.ones(2, 144, dtype=torch.bool)
    batch = token_regions_batch(imgs, (12, 12), [18, 30], valid, backend="torch")
    one = superpixels.token_regions(imgs[1], (12, 12), 30, valid[1], backend="torch")
    assert one.device.type == "cpu" and torch.equal(one, batch[1])


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (14, 14), (50, 23)])
def test_tiny_and_non_integer_images(size):
    img = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 49, dtype=torch.bool)
    out = token_regions_batch(img, (7, 7), [4, 30], valid, backend="torch")
    _assert_contiguous(out, valid)


def test_grayscale_and_integer_images():
    img = (_scene_batch(2)[:, :1] * 1000).to(torch.int32)
    out = token_regions_batch(img, (12, 12), [9, 9], torch.ones(2, 144, dtype=torch.bool), backend="torch")
    _assert_contiguous(out, torch.ones(2, 144, dtype=torch.bool))
    const = torch.zeros(1, 3, 48, 48)  # a constant image: spatial distance alone, still a partition
    out = token_regions_batch(const, (12, 12), [4], torch.ones(1, 144, dtype=torch.bool), backend="torch")
    assert int(out.max()) + 1 == 4


def test_clear_errors():
    imgs, valid = _scene_batch(2), torch.ones(2, 144, dtype=torch.bool)
    with pytest.raises(ContractError, match="one host int per image"):
        token_regions_batch(imgs, (12, 12), [4], valid, backend="torch")
    with pytest.raises(ContractError, match="positive ints"):
        token_regions_batch(imgs, (12, 12), [4, 0], valid, backend="torch")
    with pytest.raises(ContractError, match="valid must be"):
        token_regions_batch(imgs, (12, 12), [4, 4], valid[:, :100], backend="torch")
    with pytest.raises(ContractError, match="backend must be one of"):
        token_regions_batch(imgs, (12, 12), [4, 4], valid, backend="opencv")
    with pytest.raises(ContractError, match="compactness"):
        token_regions_batch(imgs, (12, 12), [4, 4], valid, compactness=0.0, backend="torch")
    with pytest.raises(ContractError, match=r"\[B, 3, H, W\]"):
        token_regions_batch(imgs[:, :2], (12, 12), [4, 4], valid, backend="torch")


def test_auto_rule():
    assert superpixels.choose_backend("auto", torch.device("meta"), 1) == "torch"  # any accelerator
    cpu = torch.device("cpu")
    assert superpixels.choose_backend("skimage", cpu, 16) == "skimage"
    assert superpixels.choose_backend("torch", cpu, 1) == "torch"
    for bsz in (1, 4, 16):  # measured: the CPU backends beat torch on CPU at every batch size
        assert superpixels.choose_backend("auto", cpu, bsz) == superpixels.resolve_backend("auto")


@pytest.mark.parametrize("name", ["altp", "altp_ddc"])
def test_altp_passes_the_conformance_kit_with_the_torch_backend(name):
    kit = pytest.importorskip("vtprune.conformance_tests")
    results = kit.check_strategy(name, max_examples=10, backend="torch")
    failed = [r for r in results if r.status == "failed"]
    assert not failed, "\n".join(r.message for r in failed)
    assert any(r.status == "passed" for r in results)


def test_altp_torch_backend_keeps_the_budget():
    ctx = vtprune.PruneContext.create(torch.randn(2, 144, 8), keep=0.25, image=_scene_batch(2))
    sel = vtprune.get_strategy("altp", backend="torch")(ctx)
    assert sel.counts.tolist() == [36, 36]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_is_torch_and_never_synchronises():
    imgs = _scene_batch(4).cuda()
    valid = torch.ones(4, 144, dtype=torch.bool, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = token_regions_batch(imgs, (12, 12), [36, 7, 18, 50], valid, backend="auto")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device.type == "cuda"
    # not compared bit for bit with the CPU: CUDA's scatter_add uses atomics (float sums in any order)
    _assert_contiguous(out.cpu(), valid.cpu())
