"""Scene generator: determinism, masks match what was drawn, sizes span the asked range."""

from __future__ import annotations

import numpy as np
import pytest

from vtprune.grounding.scenes import COLOURS, SceneConfig, make_scene, split_size


def test_same_arguments_same_scene() -> None:
    a, b = make_scene("val", 7), make_scene("val", 7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert a.phrases == b.phrases


def test_splits_differ() -> None:
    assert not np.array_equal(make_scene("val", 0).image, make_scene("test", 0).image)
    assert not np.array_equal(make_scene("train", 0).image, make_scene("train", 1).image)


def test_masks_are_disjoint_and_carry_the_object_colour() -> None:
    for i in range(12):
        s = make_scene("test", i)
        assert 1 <= len(s.objects) <= 8
        assert s.masks.shape == (len(s.objects), 192, 192)
        assert s.masks.sum(0).max() <= 1, "visible masks must not overlap"
        for obj, m in zip(s.objects, s.masks):
            assert m.sum() >= 12
            pix = s.image[m]
            # Every masked pixel is the object's colour (within the drawing jitter).
            assert np.abs(pix - np.asarray(COLOURS[obj.colour])).max() < 0.2
        # Pixels outside all masks are background, not a flat object colour copy of a mask.
        assert s.description().count("[SEG]") == len(s.objects)


def test_reading_order() -> None:
    s = make_scene("val", 3)
    keys = []
    for m in s.masks:
        r, c = np.nonzero(m)
        keys.append((int(r.mean() // 16), c.mean()))
    assert keys == sorted(keys)


def test_sizes_span_sub_patch_to_quarter_image() -> None:
    sizes = [o.size for i in range(60) for o in make_scene("val", i % 256).objects]
    assert min(sizes) < 16, "some objects must be smaller than one 16 px patch"
    assert max(sizes) > 70, "some objects must approach half the image side (quarter area)"
    assert all(8 <= s <= 96 for s in sizes)


def test_small_split_has_only_small_objects() -> None:
    sizes = [o.size for i in range(20) for o in make_scene("test_small", i).objects]
    assert max(sizes) <= 24


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        make_scene("nope", 0)
    with pytest.raises(ValueError, match="outside split"):
        make_scene("val", split_size("val") or 0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SceneConfig(image_size=100, patch_size=16)
