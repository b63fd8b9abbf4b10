"""Seeded synthetic scenes for the grounding stand-in.

A scene is an RGB image at the vision encoder's resolution with 1-8 flat-coloured shapes
over a textured background (a crop of one of scikit-image's bundled photos, or smoothed
colour noise), one boolean instance mask per object (its *visible* pixels: later objects
occlude earlier ones) and the object list in reading order.

Every scene is a pure function of ``(split, index, config)``: the same arguments always
give the same pixels and masks, on any machine.

Example::

    scene = make_scene("val", 3)
    scene.image.shape      # (192, 192, 3) float32 in [0, 1]
    scene.masks.shape      # (n_objects, 192, 192) bool
    scene.phrases          # ['red circle', 'blue cross', ...] in reading order
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage import draw
from skimage.transform import resize

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.97, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "white": (0.97, 0.97, 0.97),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

# Split name -> (seed stream id, number of scenes; None = unbounded stream for training).
SPLITS: dict[str, tuple[int, int | None]] = {
    "train": (0, None),
    "val": (1, 256),
    "test": (2, 512),
    "test_small": (3, 256),
}

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "grass",
           "gravel", "moon", "hubble_deep_field", "immunohistochemistry", "horse", "cell")


@dataclass(frozen=True)
class SceneConfig:
    """Geometry of generated scenes.

    ``min_size``/``max_size`` bound an object's bounding-box side in pixels (sampled
    log-uniformly): the defaults span half a patch to half the image side, i.e. from smaller
    than one patch to a quarter of the image area.
    """

    image_size: int = 192
    patch_size: int = 16
    min_objects: int = 1
    max_objects: int = 8
    min_size: float = 8.0
    max_size: float = 96.0
    min_visible: float = 0.6  # an occluded object keeps at least this fraction of its area

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size}); pick sizes such as 192/16 or 224/14."
            )
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_size <= self.max_size <= self.image_size:
            raise ValueError(
                f"need 0 < min_size <= max_size <= image_size, got {self.min_size}, "
                f"{self.max_size}, {self.image_size}"
            )

    @property
    def grid(self) -> int:
        """Patches per side (the visual-token grid is ``grid x grid``)."""
        return self.image_size // self.patch_size


def small_config(config: SceneConfig | None = None) -> SceneConfig:
    """The small-objects variant: every object's side is at most 1.5 patches."""
    base = config or SceneConfig()
    return SceneConfig(
        image_size=base.image_size, patch_size=base.patch_size, min_objects=base.min_objects,
        max_objects=base.max_objects, min_size=base.min_size,
        max_size=min(base.max_size, 1.5 * base.patch_size), min_visible=base.min_visible,
    )


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its words, bounding-box side (px) and centre (row, col)."""

    colour: str
    shape: str
    size: float
    centre: tuple[float, float]

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A generated scene. ``image`` [H, W, 3] float32 in [0, 1]; ``masks`` [n, H, W] bool."""

    image: np.ndarray
    masks: np.ndarray
    objects: tuple[SceneObject, ...]
    split: str
    index: int

    @property
    def phrases(self) -> list[str]:
        return [o.phrase for o in self.objects]

    def description(self) -> list[str]:
        """Target words of the grounded description: ``colour shape [SEG]`` per object."""
        words: list[str] = []
        for o in self.objects:
            words += [o.colour, o.shape, "[SEG]"]
        return words


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """Bundled scikit-image photos as float32 RGB in [0, 1] (loaded once per process)."""
    out = []
    for name in _PHOTOS:
        im = np.asarray(getattr(skdata, name)(), dtype=np.float32)
        if im.max() > 1.5:
            im = im / 255.0
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(im[..., :3]))
    return tuple(out)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured [size, size, 3] background: a photo crop or smoothed colour noise."""
    if rng.random() < 0.6:
        photo = _photos()[int(rng.integers(len(_PHOTOS)))]
        side = int(rng.integers(size // 2, min(photo.shape[:2]) + 1))
        r0 = int(rng.integers(0, photo.shape[0] - side + 1))
        c0 = int(rng.integers(0, photo.shape[1] - side + 1))
        bg = resize(photo[r0:r0 + side, c0:c0 + side], (size, size), order=1,
                    anti_aliasing=False).astype(np.float32)
    else:
        sigma = float(rng.uniform(1.0, 8.0))
        noise = rng.random((size, size, 3), dtype=np.float32)
        bg = ndimage.gaussian_filter(noise, sigma=(sigma, sigma, 0))
        lo, hi = bg.min(), bg.max()
        bg = (bg - lo) / max(hi - lo, 1e-6)
    # Lower the background contrast a little so flat shapes stay distinguishable.
    return (0.25 + 0.6 * bg).astype(np.float32)


def _shape_mask(shape: str, size: float, centre: tuple[float, float], n: int,
                angle: float) -> np.ndarray:
    """Boolean [n, n] mask of one shape with bounding side ``size`` around ``centre``."""
    cy, cx = centre
    r = size / 2.0
    mask = np.zeros((n, n), dtype=bool)
    if shape == "circle":
        rr, cc = draw.disk((cy, cx), r, shape=(n, n))
        mask[rr, cc] = True
        return mask
    if shape == "square":
        a = r * 0.9
        pts = [(-a, -a), (-a, a), (a, a), (a, -a)]
    elif shape == "diamond":
        pts = [(-r, 0.0), (0.0, r * 0.7), (r, 0.0), (0.0, -r * 0.7)]
    elif shape == "triangle":
        pts = [(-r, 0.0), (r * 0.8, r), (r * 0.8, -r)]
    elif shape == "cross":
        t = r / 3.0
        pts = [(-r, -t), (-r, t), (-t, t), (-t, r), (t, r), (t, t), (r, t), (r, -t),
               (t, -t), (t, -r), (-t, -r), (-t, -t)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    ca, sa = math.cos(angle), math.sin(angle)
    rows = [cy + y * ca - x * sa for y, x in pts]
    cols = [cx + y * sa + x * ca for y, x in pts]
    rr, cc = draw.polygon(rows, cols, shape=(n, n))
    mask[rr, cc] = True
    return mask


def _reading_key(mask: np.ndarray, patch: int) -> tuple[int, float]:
    rows, cols = np.nonzero(mask)
    return (int(rows.mean() // patch), float(cols.mean()))


def make_scene(split: str, index: int, config: SceneConfig | None = None) -> Scene:
    """Generate scene ``index`` of ``split`` (deterministic in its arguments).

    Objects are listed in reading order: by the patch row of their visible centroid, then
    by column. Raises ``ValueError`` for an unknown split or an index outside the split.
    """
    cfg = config or SceneConfig()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    stream, length = SPLITS[split]
    if index < 0 or (length is not None and index >= length):
        raise ValueError(
            f"index {index} outside split {split!r} (0..{(length or 0) - 1}); "
            "use split_size(split) for the length"
        )
    if split == "test_small" and cfg.max_size > 1.5 * cfg.patch_size:
        cfg = small_config(cfg)
    rng = np.random.default_rng([stream, index, cfg.image_size, cfg.patch_size])
    n = cfg.image_size
    image = _background(rng, n)
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    full: list[np.ndarray] = []
    objs: list[SceneObject] = []
    colours = list(COLOURS)
    for _ in range(count):
        for _attempt in range(30):
            size = float(math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size))))
            half = size / 2.0
            centre = (float(rng.uniform(half, n - half)), float(rng.uniform(half, n - half)))
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = colours[int(rng.integers(len(colours)))]
            angle = float(rng.uniform(-0.35, 0.35))
            m = _shape_mask(shape, size, centre, n, angle)
            area = int(m.sum())
            if area < 12:
                continue
            # Every earlier object must keep enough of itself once this one is on top.
            if all((f & ~m).sum() >= cfg.min_visible * f.sum() for f in _visible(full)):
                full.append(m)
                objs.append(SceneObject(colour, shape, size, centre))
                break
    visible = _visible(full)
    for obj, m in zip(objs, visible):
        rgb = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        jitter = rng.normal(0.0, 0.03, size=3).astype(np.float32)
        image[m] = np.clip(rgb + jitter, 0.0, 1.0)
    order = sorted(range(len(objs)), key=lambda i: _reading_key(visible[i], cfg.patch_size))
    masks = (np.stack([visible[i] for i in order]) if order
             else np.zeros((0, n, n), dtype=bool))
    return Scene(image=np.clip(image, 0.0, 1.0), masks=masks,
                 objects=tuple(objs[i] for i in order), split=split, index=index)


def _visible(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when drawn in list order (later on top)."""
    out = []
    for i, m in enumerate(full):
        v = m.copy()
        for later in full[i + 1:]:
            v &= ~later
        out.append(v)
    return out


def split_size(split: str) -> int | None:
    """Number of scenes in ``split`` (None for the unbounded training stream)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split][1]
