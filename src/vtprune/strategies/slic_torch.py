"""SLIC superpixels batched in torch, on the images' device (``backend="torch"``).

One job: images [B, C, H, W] + per-sample segment counts -> region id per token [B, N].
Every step is one tensor program over the batch, with no data-dependent Python loop and no
host synchronisation (sizes come from host ints: the image shape and ``n_segments``):

1. ``normalise_batch``: the same normalisation as ``superpixels.normalise_image`` (block-mean
   downscale by the integer ``factor``, NaN/inf -> 0, per-image min-max to 0..255 rounded to
   integers, one channel repeated to three), then sRGB -> CIELAB (D65), as scikit-image's
   ``rgb2lab``. Lab is computed in float64 and rounded to float32 so that the SIMD/scalar
   paths of ``pow`` cannot make a sample's numbers depend on its position in the batch.
2. ``slic_batch``: SLIC with a fixed ``ITERATIONS`` (10, scikit-image's default). Sample b
   gets an ny_b x nx_b grid of centres (ny_b * nx_b ~ n_segments[b], step
   S_b = sqrt(H * W / n_segments[b])); the centre grids are padded to the batch maximum and
   padded centres are never candidates. Each pixel compares only the centres of the 3 x 3
   grid cells around the cell it starts in (SLIC's local window, as in gSLIC), with the
   distance d_lab^2 + (m / S_b)^2 d_xy^2 (m = compactness). A centre that loses all its
   pixels keeps its previous position and colour.
3. ``grid_majority``: majority-area label of each token patch (integer patch fast path; the
   general case splits each pixel's area exactly, equal to ``superpixels.labels_to_grid``).
4. ``relabel_batch``: contiguous ids per sample in order of first appearance on valid
   tokens, -1 on invalid tokens (equal to ``superpixels.relabel``).

Connectivity is not enforced: SLIC's pixel-level clean-up (merging stray fragments into a
neighbour) is a sequential flood fill, and after the majority mapping onto a 24 x 24 grid the
CPU backends' regions can be disconnected too. ALTP only needs a partition of the tokens.

A sample's result never depends on its batch-mates: every reduction is per sample, padded
centres are masked, and ties (equal distances, equal areas) go to the lower centre index,
whose order (row-major over the centre grid) does not depend on the padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import ContractError

ITERATIONS = 10

# sRGB (D65) -> XYZ, rows X, Y, Z; and the D65 white point (scikit-image's rgb2lab).
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = (0.95047, 1.0, 1.08883)


def normalise_batch(images: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """Images [B, C, H, W] (C = 1 or 3, any range/dtype) -> [B, 3, H', W'] float32 in
    0..255 (integer-valued), H' = H // factor. Never modifies ``images``."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ContractError(f"expected images [B, 3, H, W] (or [B, 1, H, W]), got {tuple(images.shape)}")
    x = images.detach().to(torch.float32)
    if factor > 1:
        x = F.avg_pool2d(x, factor, stride=factor)  # block mean, edges cropped
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    flat = x.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    hi = flat.amax(1).view(-1, 1, 1, 1)
    span = hi - lo
    scale = torch.where(span > 0, 255.0 / torch.where(span > 0, span, 1.0), 0.0)
    x = torch.floor(((x - lo) * scale + 0.5).clamp(0.0, 255.0))  # as the uint8 cast
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _srgb_lut(device: torch.device) -> torch.Tensor:
    """Linear intensity of each sRGB level 0..255 [256] float64 (the sRGB transfer curve)."""
    c = torch.arange(256, dtype=torch.float64, device=device) / 255.0
    return torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def rgb255_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] sRGB, integer values 0..255 -> CIELAB [B, 3, H, W] float32 (L in 0..100)."""
    lin = _srgb_lut(rgb.device)[rgb.long()]  # [B, 3, H, W] float64, rgb is integer-valued
    r, g, b = lin[:, 0], lin[:, 1], lin[:, 2]
    xyz = [(m[0] * r + m[1] * g + m[2] * b) / wt for m, wt in zip(_RGB_TO_XYZ, _WHITE)]
    fx, fy, fz = (
        torch.where(t > 0.008856, t.clamp_min(0.0) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0) for t in xyz
    )
    y = xyz[1]
    lightness = torch.where(y > 0.008856, 116.0 * fy - 16.0, 903.3 * y)
    lab = torch.stack([lightness, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)
    return lab.to(torch.float32)


def centre_grid(height: int, width: int, n_segments: int) -> tuple[int, int]:
    """Rows and columns (ny, nx) of the initial centre grid, ny * nx ~ ``n_segments``."""
    step = math.sqrt(height * width / n_segments)
    ny = min(height, max(1, round(height / step)))
    nx = min(width, max(1, round(width / step)))
    return ny, nx


def slic_batch(
    lab: torch.Tensor, n_segments: list[int], compactness: float = 10.0, iterations: int = ITERATIONS
) -> torch.Tensor:
    """SLIC labels [B, H, W] (long, index into the padded ny_max x nx_max centre grid,
    row-major) of CIELAB images ``lab`` [B, 3, H, W]; ``n_segments`` [B] host ints."""
    bsz, _, height, width = lab.shape
    if len(n_segments) != bsz:
        raise ContractError(f"n_segments must have one entry per image ({bsz}), got {len(n_segments)}")
    for k in n_segments:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ContractError(f"n_segments must be positive ints, got {n_segments!r}")
    if not compactness > 0:
        raise ContractError(f"compactness must be > 0, got {compactness!r}")
    dev = lab.device
    grids = [centre_grid(height, width, k) for k in n_segments]
    nys = torch.tensor([g[0] for g in grids], device=dev).view(bsz, 1, 1)
    nxs = torch.tensor([g[1] for g in grids], device=dev).view(bsz, 1, 1)
    ny_max, nx_max = max(g[0] for g in grids), max(g[1] for g in grids)
    k_max = ny_max * nx_max
    # spatial weight (m / S)^2 per sample, S = sqrt(H W / n_segments)
    wxy = torch.tensor([compactness**2 * k / (height * width) for k in n_segments], device=dev)
    wxy = wxy.view(bsz, 1).to(torch.float32)

    ys = torch.arange(height, device=dev, dtype=torch.float32)
    xs = torch.arange(width, device=dev, dtype=torch.float32)
    # the cell each pixel starts in, per sample: [B, H, W]
    cy = torch.div(torch.arange(height, device=dev).view(1, -1, 1) * nys, height, rounding_mode="floor")
    cx = torch.div(torch.arange(width, device=dev).view(1, 1, -1) * nxs, width, rounding_mode="floor")
    cy, cx = cy.expand(bsz, height, width), cx.expand(bsz, height, width)

    # pixel features [B, 5, P]: L, a, b, y, x
    pix = torch.cat(
        [lab, ys.view(1, 1, -1, 1).expand(bsz, 1, height, width), xs.view(1, 1, 1, -1).expand(bsz, 1, height, width)],
        dim=1,
    ).flatten(2)
    npix = height * width

    # initial centres: cell midpoints; colour of the pixel under the midpoint. [B, 5, K]
    gy = torch.arange(ny_max, device=dev).view(1, -1, 1)
    gx = torch.arange(nx_max, device=dev).view(1, 1, -1)
    py = ((2 * gy + 1) * height).div(2 * nys, rounding_mode="floor").clamp(max=height - 1)
    px = ((2 * gx + 1) * width).div(2 * nxs, rounding_mode="floor").clamp(max=width - 1)
    at = (py * width + px).reshape(bsz, k_max)  # [B, K]
    centres = pix.gather(2, at.unsqueeze(1).expand(-1, 5, -1))  # [B, 5, K]

    # the 9 candidate centres of each pixel: [9, B, P] index and validity
    cand: list[torch.Tensor] = []
    ok: list[torch.Tensor] = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny_, nx_ = cy + dy, cx + dx
            inside = (ny_ >= 0) & (ny_ < nys) & (nx_ >= 0) & (nx_ < nxs)
            cand.append((ny_.clamp(0, ny_max - 1) * nx_max + nx_.clamp(0, nx_max - 1)).reshape(bsz, npix))
            ok.append(inside.reshape(bsz, npix))
    cand_t = torch.stack(cand)  # [9, B, P]
    # +inf on candidates outside the sample's own centre grid (borders, padding)
    penalty = torch.where(torch.stack(ok), 0.0, float("inf")).to(torch.float32)  # [9, B, P]
    ones = torch.ones(bsz, npix, device=dev, dtype=torch.float32)

    labels = cand_t[4]
    for _ in range(iterations):  # fixed count: not data dependent
        best = torch.full((bsz, npix), float("inf"), device=dev)
        labels = cand_t[4]
        for j in range(9):
            c = centres.gather(2, cand_t[j].unsqueeze(1).expand(-1, 5, -1))  # [B, 5, P]
            d = (pix - c).square_()
            dist = (d[:, 0] + d[:, 1] + d[:, 2]).add_(wxy * (d[:, 3] + d[:, 4])).add_(penalty[j])  # [B, P]
            better = dist < best  # strict: ties keep the earlier candidate, whatever the padding
            best = torch.where(better, dist, best)
            labels = torch.where(better, cand_t[j], labels)
        sums = torch.zeros(bsz, 5, k_max, device=dev).scatter_add_(
            2, labels.unsqueeze(1).expand(-1, 5, -1), pix
        )  # [B, 5, K]
        counts = torch.zeros(bsz, k_max, device=dev).scatter_add_(1, labels, ones)  # [B, K]
        centres = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1.0).unsqueeze(1), centres)
    return labels.view(bsz, height, width)


def _overlaps_t(size: int, cells: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """Torch twin of ``superpixels._overlaps``: (first patch, its overlap, second, its overlap)."""
    p = torch.arange(size, dtype=torch.float64, device=dev)
    start, end = p * cells / size, (p + 1) * cells / size
    first = torch.floor(start).long().clamp(max=cells - 1)
    boundary = first.to(torch.float64) + 1.0
    w_first = torch.minimum(end, boundary) - start
    second = (first + 1).clamp(max=cells - 1)
    w_second = torch.where(end > boundary, end - boundary, torch.zeros_like(end))
    return first, w_first, second, w_second


def grid_majority(labels: torch.Tensor, grid: tuple[int, int], n_labels: int) -> torch.Tensor:
    """Majority-area label of each token patch: labels [B, H, W] (0..n_labels-1) -> [B, h * w].

    Same rule as ``superpixels.labels_to_grid``: a label map smaller than the grid is
    upscaled (nearest) first; each pixel's area is split exactly between the patches it
    overlaps; ties go to the lower label.
    """
    h, w = grid
    if labels.dim() != 3 or labels.shape[1] == 0 or labels.shape[2] == 0:
        raise ContractError(f"labels must be a non-empty [B, H, W] tensor, got {tuple(labels.shape)}")
    bsz = labels.shape[0]
    fy, fx = -(-h // labels.shape[1]), -(-w // labels.shape[2])
    if fy > 1 or fx > 1:
        labels = labels.repeat_interleave(fy, 1).repeat_interleave(fx, 2)
    big_h, big_w = labels.shape[1:]
    dev = labels.device
    lab = labels.reshape(bsz, -1).long()
    size = h * w * n_labels
    if big_h % h == 0 and big_w % w == 0:  # integer patch: each pixel in exactly one patch
        py, px = big_h // h, big_w // w
        token = (torch.arange(big_h, device=dev) // py).view(-1, 1) * w + (torch.arange(big_w, device=dev) // px)
        key = token.reshape(1, -1) * n_labels + lab  # [B, P]
        counts = torch.zeros(bsz, size, device=dev, dtype=torch.int32)
        counts.scatter_add_(1, key, torch.ones_like(key, dtype=torch.int32))
        return counts.view(bsz, h * w, n_labels).argmax(2)
    ry0, wy0, ry1, wy1 = _overlaps_t(big_h, h, dev)
    cx0, wx0, cx1, wx1 = _overlaps_t(big_w, w, dev)
    area = torch.zeros(bsz, size, device=dev, dtype=torch.float64)
    for rows, wy in ((ry0, wy0), (ry1, wy1)):
        for cols, wx in ((cx0, wx0), (cx1, wx1)):
            weight = (wy.view(-1, 1) * wx.view(1, -1)).reshape(1, -1).expand(bsz, -1)  # [B, P]
            key = (rows.view(-1, 1) * w + cols.view(1, -1)).reshape(1, -1) * n_labels + lab
            part = torch.zeros(bsz, size, device=dev, dtype=torch.float64)
            area += part.scatter_add_(1, key, weight)
    return area.view(bsz, h * w, n_labels).argmax(2)


def relabel_batch(regions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Region ids [B, N] (>= 0) -> contiguous ids 0..R_b-1 per sample in order of first
    appearance on valid tokens, -1 on invalid tokens (``valid`` [B, N] bool)."""
    if regions.shape != valid.shape or regions.dim() != 2:
        raise ContractError(
            f"regions and valid must both be [B, N], got {tuple(regions.shape)} and {tuple(valid.shape)}"
        )
    bsz, n = regions.shape
    dev = regions.device
    valid = valid.to(device=dev, dtype=torch.bool)
    if n == 0:
        return regions.clone()
    ids = regions.long()
    key = torch.where(valid, ids, ids.amax(1, keepdim=True) + 1)  # invalid tokens: one last group
    order = torch.sort(key, dim=1, stable=True)  # [B, N]; equal ids in ascending position
    sid, spos = order.values, order.indices
    svalid = valid.gather(1, spos)
    new_group = torch.ones_like(svalid)
    new_group[:, 1:] = sid[:, 1:] != sid[:, :-1]
    group = new_group.long().cumsum(1) - 1  # [B, N] group of each sorted token, < N
    first = torch.full((bsz, n), n, device=dev, dtype=torch.long)  # first position per group
    first.scatter_reduce_(1, group, torch.where(svalid, spos, n), reduce="amin", include_self=True)
    # rank of each group by first position; absent and invalid groups (first = n) sort last
    rank = torch.empty_like(first)
    rank.scatter_(1, first.argsort(dim=1, stable=True), torch.arange(n, device=dev).expand(bsz, n))
    token_group = torch.empty_like(group).scatter_(1, spos, group)  # [B, N]
    out = rank.gather(1, token_group)
    return torch.where(valid, out, torch.full_like(out, -1)).to(regions.dtype)


def token_regions_torch(
    images: torch.Tensor,
    grid: tuple[int, int],
    n_segments: list[int],
    valid: torch.Tensor,
    compactness: float = 10.0,
    factor: int = 1,
    iterations: int = ITERATIONS,
) -> torch.Tensor:
    """Region of every token: images [B, C, H, W] -> [B, h * w] long on the images' device,
    contiguous per sample over valid tokens (raster order of first appearance), -1 invalid."""
    rgb = normalise_batch(images, factor)  # [B, 3, H', W']
    labels = slic_batch(rgb255_to_lab(rgb), n_segments, compactness, iterations)  # [B, H', W']
    ny_nx = [centre_grid(rgb.shape[2], rgb.shape[3], k) for k in n_segments]
    n_labels = max(g[0] for g in ny_nx) * max(g[1] for g in ny_nx)
    regions = grid_majority(labels, grid, n_labels)  # [B, N]
    return relabel_batch(regions, valid.to(images.device))


__all__ = [
    "ITERATIONS",
    "centre_grid",
    "grid_majority",
    "normalise_batch",
    "relabel_batch",
    "rgb255_to_lab",
    "slic_batch",
    "token_regions_torch",
]
