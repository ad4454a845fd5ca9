"""Views: flips and jitter alike at both magnifications."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cases import CMU1
from napari_xmag.distill import (
    PairDataset,
    View,
    apply_view,
)
from napari_xmag.distill.augment import grey_level
from napari_xmag.distill.pairs import read_pair
from napari_xmag.slide import Slide


def test_views_flip_and_jitter_both_magnifications_alike(few_pairs) -> None:
    geometry = few_pairs.geometries[0]
    with Slide(CMU1.path) as slide:
        x, y = few_pairs.coords[0]
        _, region = read_pair(slide, geometry, int(x), int(y))
    crops = geometry.split(region)
    # flipping the region, then cutting, keeps crop k at row k // 4, column k % 4 of the flipped field
    flipped = geometry.split(apply_view(region, View(hflip=True, vflip=True), 0.0))
    for k in range(16):
        row, col = divmod(k, 4)
        np.testing.assert_array_equal(flipped[k], crops[(3 - row) * 4 + (3 - col)][::-1, ::-1])

    dataset = PairDataset(few_pairs, views=2, flips=True, jitter=True, seed=3)
    item = dataset[(0, 5)]
    again = dataset[(0, 5)]
    np.testing.assert_array_equal(item["student"], again["student"])  # keyed, not global, randomness
    assert not np.array_equal(item["student"], dataset[(0, 6)]["student"])  # a new epoch, new views
    views = dataset.draw(0, 5)
    assert all(v.jittered for v in views)
    from PIL import Image

    def reduced(field: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(field).resize((112, 112), Image.Resampling.LANCZOS)).astype(int)

    grey = grey_level(region)
    for v, student, teacher in zip(views, item["student"], item["teacher"], strict=True):
        field = apply_view(region, v, grey)
        np.testing.assert_array_equal(teacher, geometry.split(field))
        # The 5x image is the same field with the same flips and colours: equal to the jittered
        # 20x field reduced, up to rounding and clipping (the jitter is applied after reduction).
        same = np.abs(student - reduced(field)).mean()
        no_jitter = replace(v, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
        flips_only = np.abs(student - reduced(apply_view(region, no_jitter, grey))).mean()
        assert same < 1.0 and flips_only > 2 * same, (same, flips_only)
