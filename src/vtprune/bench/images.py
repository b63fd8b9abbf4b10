"""Sample images for benchmarks and the demo: the bundled PNGs in ``vtprune/data``."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from ..core import ContractError


def bundled_images() -> list[str]:
    """Names of the PNG images shipped in ``vtprune/data`` (sorted; may be empty)."""
    try:
        root = resources.files("vtprune") / "data"
        return sorted(p.name for p in root.iterdir() if p.name.endswith(".png"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_image(name: str | None = None, size: int = 336) -> torch.Tensor:
    """A bundled image (``name`` or the first one) as uint8 [3, size, size].

    Falls back to a seeded synthetic picture (smooth gradients and blocks) when the package
    ships no images, so benchmarks never need a download. A ``name`` that is not bundled raises.
    """
    names = bundled_images()
    if name is not None and name not in names and f"{name}.png" not in names:
        raise ContractError(f"no bundled image {name!r}; bundled images: {names or 'none'}")
    if not names:
        return synthetic_image(size)
    chosen = name if name in names else f"{name}.png" if name else names[0]
    import matplotlib.image as mpimg

    with resources.as_file(resources.files("vtprune") / "data" / chosen) as file:
        array = np.asarray(mpimg.imread(file, format="png"), dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    pixels = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1)  # [3, H, W] in [0, 1]
    if pixels.shape[1:] != (size, size):
        pixels = F.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic_image(size: int = 336, seed: int = 0) -> torch.Tensor:
    """A deterministic uint8 [3, size, size] test picture: gradients plus a few coloured blocks."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    img = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                       0.5 * torch.ones(size, size)])
    for _ in range(6):
        y, x = torch.randint(0, size * 3 // 4, (2,), generator=g).tolist()
        s = int(torch.randint(size // 10, size // 4, (1,), generator=g))
        img[:, y:y + s, x:x + s] = torch.rand(3, 1, 1, generator=g)
    return (img * 255).round().to(torch.uint8)
