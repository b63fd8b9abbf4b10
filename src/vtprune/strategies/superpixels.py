"""SLIC superpixels of the image the vision encoder saw, mapped onto the visual token grid.

Used by ALTP's DDC/DDF allocators (``altp.py``) and by ``vtprune show``. One job: image
[3, H, W] -> region id per token [N] (raster order), invalid tokens -1, ids contiguous.

Backends: ``"fast_slic"`` (the ``fast-slic`` package; its AVX2 kernel when the CPU has it),
``"skimage"`` (``skimage.segmentation.slic``), ``"torch"`` (``slic_torch``: batched over the
images of a batch, on their device, no host synchronisation), or ``"auto"`` (see
:func:`choose_backend`: torch on an accelerator; on CPU fast-slic when importable, else
scikit-image: both beat the torch backend on CPU at every batch size measured, docs/altp.md). All run SLIC in CIELAB with the same ``compactness``
(default 10), though the implementations weigh it slightly differently and never give
identical labels.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from ..core import ContractError
from ..core.canvas import block_indices, image_block
from .slic_torch import centre_grid, token_regions_torch

BACKENDS = ("auto", "fast_slic", "skimage", "torch")

PATCH_PIXELS = 3
"""Default SLIC resolution: about this many pixels per token patch side (:func:`slic_factor`).
Was 7 until the batch-16 overhead work: 3 runs SLIC on ~1/4 of the pixels (336 px / 24x24:
84 x 84 instead of 168 x 168) with token-level quality and grounding scores unchanged within
their standard errors (docs/altp.md, "SLIC resolution")."""

# fast-slic divides by its grid step int(sqrt(H * W / n)); a step of 0 kills the process with
# SIGFPE (seen on a 1x1 image). Images smaller than this are upscaled (nearest) before SLIC.
_FAST_SLIC_MIN_SIDE = 16
_FAST_SLIC_MIN_PIXELS_PER_SEGMENT = 16


def downscale(x: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downscale of [C, H, W] by an integer ``factor`` (edges cropped).

    Each block is summed in raster order (one strided copy puts the factor**2 block offsets
    first, then a reduction over that axis adds them in that order), then multiplied by
    1 / factor**2 in float32: the same sums as adding the factor**2 strided views one after
    the other, in fewer passes.
    """
    if factor <= 1:
        return x
    c, h, w = x.shape
    hh, ww = h // factor, w // factor
    blocks = np.asarray(x[:, : hh * factor, : ww * factor], dtype=np.float32)
    blocks = blocks.reshape(c, hh, factor, ww, factor).transpose(2, 4, 0, 1, 3).reshape(factor * factor, c, hh, ww)
    out = np.add.reduce(blocks, axis=0)
    out *= np.float32(1.0 / (factor * factor))
    return out


def normalise_image(image: torch.Tensor, factor: int = 1) -> np.ndarray:
    """One image [C, H, W] (C = 1 or 3, any range, any float/int dtype) -> uint8 [H', W', 3].

    Block-mean downscaled by the integer ``factor`` (H' = H // factor), then min-max
    normalised per image (a constant image becomes all zeros); one channel is repeated to
    three. Never modifies ``image``.
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ContractError(f"expected one image [3, H, W] (or [1, H, W]), got {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float32).numpy()  # numpy: much faster than torch here
    return _normalise_array(x, factor)


def _normalise_array(x: np.ndarray, factor: int) -> np.ndarray:
    """:func:`normalise_image` on a float32 array [C, H, W] already on the host."""
    x = downscale(x, factor)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    out = np.empty((x.shape[1], x.shape[2], 3), dtype=np.float32)
    for c in range(3):  # channels last; one channel is repeated (per-channel copies are fast)
        out[:, :, c] = x[c % x.shape[0]]
    if hi > lo:
        out -= lo
        out *= 255.0 / (hi - lo)
        out += 0.5
        np.clip(out, 0.0, 255.0, out=out)
    else:
        out[...] = 0.0
    return out.astype(np.uint8)


@lru_cache(maxsize=1)
def _fast_slic_class() -> type | None:
    """The fastest usable fast-slic class, or None when fast-slic is not installed."""
    if importlib.util.find_spec("fast_slic") is None:
        return None
    import fast_slic

    archs = fast_slic.get_supported_archs() if callable(fast_slic.get_supported_archs) else ()
    if "x64/avx2" in tuple(archs):
        from fast_slic.avx2 import SlicAvx2

        return SlicAvx2
    return fast_slic.Slic


def fast_slic_available() -> bool:
    """True when the fast-slic package can be imported."""
    return _fast_slic_class() is not None


def fast_slic_kernel() -> str | None:
    """Which fast-slic class ``"auto"`` uses (``"SlicAvx2"``, ``"Slic"``) or None if absent."""
    cls = _fast_slic_class()
    return None if cls is None else cls.__name__


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> the CPU backend for single images: ``"fast_slic"`` when installed, else
    ``"skimage"``; checks named ones (``"torch"`` is always available)."""
    if backend not in BACKENDS:
        raise ContractError(f"SLIC backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "fast_slic" if fast_slic_available() else "skimage"
    if backend == "fast_slic" and not fast_slic_available():
        raise ContractError(
            "SLIC backend 'fast_slic' was requested but the fast-slic package is not installed; "
            "install it with `pip install --no-build-isolation fast-slic==0.4.0` (the "
            "vtprune[fast] extra), or pass backend='skimage' or backend='auto'"
        )
    if backend == "skimage" and importlib.util.find_spec("skimage") is None:
        raise ContractError(
            "SLIC backend 'skimage' was requested but scikit-image is not installed; "
            "`pip install scikit-image`, or pass backend='fast_slic'"
        )
    return backend


def choose_backend(backend: str, device: torch.device, batch_size: int) -> str:
    """The backend that runs for ``batch_size`` images on ``device``: a named one as is
    (checked); ``"auto"`` -> ``"torch"`` on any non-CPU device (no copy to the host, no
    synchronisation), else :func:`resolve_backend` (fast-slic, else scikit-image).

    Why (measured, docs/altp.md and docs/benchmarks.md, ``bench_slic_quality.py speed``): on a
    CPU the torch kernel is slower than both host backends at every batch size measured, so
    ``batch_size`` does not change the CPU choice today; it is a parameter so that a faster
    torch kernel can claim large CPU batches without an API change.
    """
    if backend == "auto" and device.type != "cpu":
        return "torch"
    return resolve_backend(backend)


def _slic_fast(rgb: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    cls = _fast_slic_class()
    assert cls is not None
    h, w = rgb.shape[:2]
    f = 1
    while min(h, w) * f < _FAST_SLIC_MIN_SIDE or h * w * f * f < _FAST_SLIC_MIN_PIXELS_PER_SEGMENT * n_segments:
        f += 1
    if f > 1:  # upscaled labels map onto the token grid just the same
        rgb = np.ascontiguousarray(np.repeat(np.repeat(rgb, f, axis=0), f, axis=1))
    # One thread: deterministic, and the machine's cores are shared.
    slic = cls(num_components=int(n_segments), compactness=float(compactness), num_threads=1)
    return np.asarray(slic.iterate(rgb), dtype=np.int64)


def _slic_skimage(rgb: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    from skimage.segmentation import slic

    labels = slic(
        rgb, n_segments=int(n_segments), compactness=float(compactness), start_label=0,
        channel_axis=-1,
    )
    return np.asarray(labels, dtype=np.int64)


_SLIC: dict[str, Callable[[np.ndarray, int, float], np.ndarray]] = {
    "fast_slic": _slic_fast,
    "skimage": _slic_skimage,
}


def slic_labels(
    image: torch.Tensor,
    n_segments: int,
    compactness: float = 10.0,
    backend: str = "auto",
    factor: int = 1,
) -> np.ndarray:
    """SLIC labels [H // factor, W // factor] (int64, >= 0) of one image [C, H, W] (any
    range), computed on the image block-mean downscaled by ``factor``."""
    if not isinstance(n_segments, int) or isinstance(n_segments, bool) or n_segments < 1:
        raise ContractError(f"n_segments must be a positive int, got {n_segments!r}")
    if not compactness > 0:
        raise ContractError(f"compactness must be > 0, got {compactness!r}")
    name = resolve_backend(backend)
    if name == "torch":
        from .slic_torch import normalise_batch, rgb255_to_lab, slic_batch

        lab = rgb255_to_lab(normalise_batch(image.unsqueeze(0), factor))
        return slic_batch(lab, [n_segments], float(compactness))[0].cpu().numpy()
    rgb = normalise_image(image, factor)
    return _SLIC[name](rgb, n_segments, float(compactness))


def slic_factor(image_hw: tuple[int, int], grid: tuple[int, int], patch_pixels: int | None) -> int:
    """Integer downscale so that a token patch is about ``patch_pixels`` pixels on its
    shorter side (never below it); 1 when ``patch_pixels`` is None or the image is small.

    A 336 x 336 image on a 24 x 24 grid (14 px patches) with ``patch_pixels=7`` -> 2, with
    the default 3 -> 4.
    """
    if patch_pixels is None:
        return 1
    if not isinstance(patch_pixels, int) or isinstance(patch_pixels, bool) or patch_pixels < 1:
        raise ContractError(f"patch_pixels must be a positive int or None, got {patch_pixels!r}")
    side = min(image_hw[0] / grid[0], image_hw[1] / grid[1])
    return max(1, int(side // patch_pixels))


def _overlaps(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size`` pixels along one axis split into ``cells`` equal patches:
    (first patch, its overlap length, second patch, its overlap length), in patch units.

    Pixel p covers [p, p+1) pixel units = [p*c/s, (p+1)*c/s) patch units; a pixel overlaps at
    most two patches when s >= c, and it may span several when s < c (we keep the first two
    and the callers upscale the label map first so that s >= c always holds).
    """
    p = np.arange(size, dtype=np.float64)
    start, end = p * cells / size, (p + 1) * cells / size
    first = np.minimum(np.floor(start).astype(np.int64), cells - 1)
    boundary = first + 1.0
    w_first = np.minimum(end, boundary) - start
    second = np.minimum(first + 1, cells - 1)
    w_second = np.where(end > boundary, end - boundary, 0.0)
    return first, w_first, second, w_second


def labels_to_grid(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Majority-area label of each token patch: labels [H, W] -> [h * w] (raster order).

    Patches are the h x w equal cells of the image, of any (non-integer) pixel size; each
    pixel's area is split exactly between the patches it overlaps. Ties go to the lower
    label. A label map smaller than the grid is upscaled (nearest) first.
    """
    h, w = grid
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.size == 0:
        raise ContractError(f"labels must be a non-empty [H, W] array, got shape {lab.shape}")
    fy, fx = -(-h // lab.shape[0]), -(-w // lab.shape[1])
    if fy > 1 or fx > 1:
        lab = np.repeat(np.repeat(lab, fy, axis=0), fx, axis=1)
    big_h, big_w = lab.shape
    if int(lab.min()) >= 0 and int(lab.max()) < 4 * lab.size:
        dense = lab.astype(np.int64, copy=False)  # SLIC labels are already small ints
    else:
        _, inverse = np.unique(lab, return_inverse=True)
        dense = inverse.reshape(big_h, big_w).astype(np.int64)
    n_labels = int(dense.max()) + 1
    if big_h % h == 0 and big_w % w == 0:  # integer patch size: each pixel in one patch
        py, px = big_h // h, big_w // w
        token = (np.arange(big_h) // py)[:, None] * w + (np.arange(big_w) // px)[None, :]
        key = token * n_labels + dense
        counts = np.bincount(key.ravel(), minlength=h * w * n_labels)
        return np.asarray(counts.reshape(h * w, n_labels).argmax(axis=1), dtype=np.int64)
    area = np.zeros(h * w * n_labels, dtype=np.float64)
    flat = dense.ravel()
    for token, weight in _share_tables(big_h, big_w, h, w):
        area += np.bincount(token * n_labels + flat, weights=weight, minlength=area.size)
    return np.asarray(area.reshape(h * w, n_labels).argmax(axis=1), dtype=np.int64)


@lru_cache(maxsize=16)
def _share_tables(big_h: int, big_w: int, h: int, w: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The four (token [H * W] int64, area share [H * W] float64) tables of
    :func:`labels_to_grid` for an H x W label map on an h x w grid (first/second overlapped
    patch along each axis); cached, read-only (they depend only on the shapes)."""
    ry0, wy0, ry1, wy1 = _overlaps(big_h, h)
    cx0, wx0, cx1, wx1 = _overlaps(big_w, w)
    tables = []
    for rows, wy in ((ry0, wy0), (ry1, wy1)):
        for cols, wx in ((cx0, wx0), (cx1, wx1)):
            token = (rows[:, None] * w + cols[None, :]).ravel()
            weight = (wy[:, None] * wx[None, :]).ravel()
            token.setflags(write=False)
            weight.setflags(write=False)
            tables.append((token, weight))
    return tuple(tables)


def relabel(regions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Region ids [N] -> contiguous ids 0..R-1 in order of first appearance on valid tokens,
    -1 on invalid tokens. Returns a new tensor (numpy inside: cheaper on these tiny arrays)."""
    mask = valid.detach().cpu().numpy().astype(bool)
    out = _relabel_array(regions.detach().cpu().numpy(), mask)
    return torch.from_numpy(out).to(device=regions.device, dtype=regions.dtype)


def _relabel_array(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`relabel` on host arrays: regions [N] int, mask [N] bool -> [N] int64."""
    ids = regions[mask]
    out = np.full(mask.shape, -1, dtype=np.int64)
    if ids.size:
        _, first_pos, first_seen = np.unique(ids, return_index=True, return_inverse=True)
        # order ids by first appearance (raster order) so numbering is deterministic
        rank = np.empty(first_pos.size, dtype=np.int64)
        rank[first_pos.argsort()] = np.arange(first_pos.size)
        out[mask] = rank[first_seen.reshape(-1)]
    return out


def token_regions(
    image: torch.Tensor,
    grid: tuple[int, int],
    n_segments: int,
    valid: torch.Tensor | None = None,
    compactness: float = 10.0,
    backend: str = "auto",
    patch_pixels: int | None = PATCH_PIXELS,
) -> torch.Tensor:
    """Superpixel region of each token: image [C, H, W] -> [N] long (CPU), N = h * w.

    SLIC runs on the image downscaled so token patches are about ``patch_pixels`` pixels
    wide (:func:`slic_factor`; None = full resolution). Ids are contiguous 0..R-1 over valid
    tokens (numbered in raster order of first appearance); invalid tokens (``valid`` [N]
    False) get -1.
    """
    h, w = grid
    if backend == "torch":
        mask1 = torch.ones(1, h * w, dtype=torch.bool) if valid is None else valid.reshape(1, -1)
        return token_regions_batch(
            image.unsqueeze(0), grid, [n_segments], mask1, compactness, backend, patch_pixels
        )[0].cpu()
    factor = slic_factor((int(image.shape[-2]), int(image.shape[-1])), grid, patch_pixels)
    labels = slic_labels(image, n_segments, compactness, backend, factor)
    regions = torch.from_numpy(labels_to_grid(labels, (h, w)))
    mask = torch.ones(h * w, dtype=torch.bool) if valid is None else valid.to("cpu", torch.bool)
    return relabel(regions, mask)


def token_regions_batch(
    images: torch.Tensor,
    grid: tuple[int, int],
    n_segments: list[int],
    valid: torch.Tensor,
    compactness: float = 10.0,
    backend: str = "auto",
    patch_pixels: int | None = PATCH_PIXELS,
) -> torch.Tensor:
    """Superpixel region of every token of every image (:func:`token_regions_counted`
    without the count)."""
    return token_regions_counted(images, grid, n_segments, valid, compactness, backend, patch_pixels)[0]


def token_regions_counted(
    images: torch.Tensor,
    grid: tuple[int, int],
    n_segments: list[int],
    valid: torch.Tensor,
    compactness: float = 10.0,
    backend: str = "auto",
    patch_pixels: int | None = PATCH_PIXELS,
    grids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """(regions, width): width is a host int >= every sample's region count, known without
    reading the device (exact for the CPU backends; the SLIC centre grid for ``"torch"``).

    Superpixel region of every token of every image: [B, C, H, W] -> [B, N] long on
    ``images``' device; per sample, ids are contiguous 0..R_b-1 over valid tokens (raster
    order of first appearance) and -1 on invalid tokens (``valid`` [B, N] False).

    ``grids`` [B, 2] (host, optional) makes ``grid`` a canvas (:attr:`PruneContext.grids`):
    each row is segmented alone on its own grid, from the top-left part of its image that
    holds it, and its regions are placed on its block.

    ``n_segments`` [B] are host ints (derived from budgets known before the call). A sample's
    regions never depend on its batch-mates. ``backend`` is resolved by
    :func:`choose_backend`: ``"torch"`` runs each distinct grid's rows as one tensor program
    on the images' device with no host synchronisation; the CPU backends copy the batch to
    the host once and run one image at a time.
    """
    if images.dim() != 4:
        raise ContractError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    bsz, n = int(images.shape[0]), grid[0] * grid[1]
    if len(n_segments) != bsz:
        raise ContractError(f"n_segments must have one host int per image ({bsz}), got {len(n_segments)}")
    for k in n_segments:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ContractError(f"n_segments must be positive ints, got {list(n_segments)!r}")
    if tuple(valid.shape) != (bsz, n):
        raise ContractError(f"valid must be [B, N] = {(bsz, n)} for grid {grid}, got {tuple(valid.shape)}")
    if not compactness > 0:
        raise ContractError(f"compactness must be > 0, got {compactness!r}")
    if grids is not None and tuple(grids.shape) != (bsz, 2):
        raise ContractError(f"grids must be [B, 2] = {(bsz, 2)}, got {tuple(grids.shape)}")
    name = choose_backend(backend, images.device, bsz)
    if bsz == 0:
        return torch.zeros(0, n, dtype=torch.long, device=images.device), 0
    image_hw = (int(images.shape[-2]), int(images.shape[-1]))
    own = [(int(h), int(w)) for h, w in grids.tolist()] if grids is not None else [grid] * bsz  # host
    if name == "torch":
        return _token_regions_torch(images, grid, own, n_segments, valid, float(compactness), patch_pixels)
    if images.shape[1] not in (1, 3):
        raise ContractError(f"expected images [B, 3, H, W] (or [B, 1, H, W]), got {tuple(images.shape)}")
    # one copy to the host and one .numpy() each for the whole batch, not one per sample
    host = images.detach().to("cpu", torch.float32).numpy()  # [B, C, H, W]
    host_valid = valid.detach().to("cpu", torch.bool).numpy()  # [B, N]
    rows = np.full((bsz, n), -1, dtype=np.int64)
    for b, g in enumerate(own):
        height, width = image_block(image_hw, g, grid)
        factor = slic_factor((height, width), g, patch_pixels)
        rgb = _normalise_array(host[b][:, :height, :width], factor)
        block = (np.arange(g[0])[:, None] * grid[1] + np.arange(g[1])[None, :]).reshape(-1)
        labels = labels_to_grid(_SLIC[name](rgb, int(n_segments[b]), float(compactness)), g)
        rows[b, block] = _relabel_array(labels, host_valid[b, block])
    found = int(rows.max()) + 1  # host arrays: no device read
    return torch.from_numpy(rows).to(images.device), found


def _token_regions_torch(
    images: torch.Tensor,
    grid: tuple[int, int],
    own: list[tuple[int, int]],
    n_segments: list[int],
    valid: torch.Tensor,
    compactness: float,
    patch_pixels: int | None,
) -> tuple[torch.Tensor, int]:
    """The ``"torch"`` backend of :func:`token_regions_counted`: one program per distinct own
    grid (one in all without a canvas)."""
    dev = images.device
    valid = valid.to(dev)
    image_hw = (int(images.shape[-2]), int(images.shape[-1]))
    groups: dict[tuple[int, int], list[int]] = {}
    for b, g in enumerate(own):  # host lists: nothing is read from a tensor
        groups.setdefault(g, []).append(b)
    if list(groups) == [grid]:  # every row on the whole grid: the batch as it is
        factor = slic_factor(image_hw, grid, patch_pixels)
        centres = max(math.prod(centre_grid(image_hw[0] // factor, image_hw[1] // factor, k)) for k in n_segments)
        return token_regions_torch(images, grid, n_segments, valid, compactness, factor), min(grid[0] * grid[1], centres)
    out = torch.full((len(own), grid[0] * grid[1]), -1, dtype=torch.long, device=dev)
    width = 0
    for g, rows in groups.items():
        height, wide = image_block(image_hw, g, grid)
        factor = slic_factor((height, wide), g, patch_pixels)
        r, block = torch.tensor(rows, dtype=torch.long, device=dev), block_indices(g, grid, dev)
        segs = [n_segments[i] for i in rows]
        pixels = images.index_select(0, r)[..., :height, :wide]
        found = token_regions_torch(pixels, g, segs, valid.index_select(0, r).index_select(1, block), compactness, factor)
        out[r[:, None], block[None, :]] = found
        centres = max(math.prod(centre_grid(height // factor, wide // factor, k)) for k in segs)
        width = max(width, min(g[0] * g[1], centres))
    return out, width


__all__ = [
    "BACKENDS",
    "PATCH_PIXELS",
    "choose_backend",
    "fast_slic_available",
    "fast_slic_kernel",
    "labels_to_grid",
    "normalise_image",
    "relabel",
    "resolve_backend",
    "slic_factor",
    "slic_labels",
    "token_regions",
    "token_regions_batch",
    "token_regions_counted",
]
