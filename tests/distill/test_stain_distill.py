"""Stain normalisation of training pairs and stain (HED) augmentation of views."""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb

from cases import CMU1
from napari_xmag.distill import (
    PairDataset,
    PairIndex,
    PairSettings,
    View,
    apply_view,
    draw_views,
    read_slide_list,
)
from napari_xmag.distill.augment import view_rng
from napari_xmag.distill.pairs import read_pair
from napari_xmag.slide import Slide
from napari_xmag.stain import fit_stain_normalizer

SETTINGS = {"patch_size": 112, "crop_size": 112, "stride": 112, "min_tissue": 0.5, "five_x_source": "read"}


def test_pairs_are_normalised_with_the_slides_one_fit() -> None:
    plain = PairIndex.build(read_slide_list([CMU1.path]), PairSettings(**SETTINGS))
    normed = PairIndex.build(read_slide_list([CMU1.path]), PairSettings(**SETTINGS, stain_norm="macenko"))
    assert plain.normalizers == (None,) and normed.normalizers[0] is not None
    # a stain setting is part of what the pairs are (a teacher cache for one refuses the other);
    # without one the hash is what it was before stain normalisation existed
    assert normed.fingerprint() != plain.fingerprint()
    assert normed.subset([1, 0]).normalizers == normed.normalizers
    item = PairDataset(normed, views=1, flips=False, jitter=False)[(0, 0)]
    with Slide(CMU1.path) as slide:
        normalizer = fit_stain_normalizer(slide, "macenko")
        x, y = (int(v) for v in normed.coords[0])
        student, region = read_pair(slide, normed.geometries[0], x, y, "read")
    assert normalizer is not None
    np.testing.assert_array_equal(item["student"][0], normalizer(student))
    np.testing.assert_array_equal(item["teacher"][0], normed.geometries[0].split(normalizer(region)))
    assert not np.array_equal(item["student"][0], student)


def densities(image: np.ndarray) -> np.ndarray:
    """H, E, D optical densities by Ruifrok's matrix (the definition, written out)."""
    return -np.log((image.astype(float) + 1) / 256) @ hed_from_rgb


def test_stain_augmentation_scales_the_stain_densities() -> None:
    with Slide(CMU1.path) as slide:
        region = slide.read_region(1000, 1500, 448, mpp=0.5).image
    tissue = region.mean(-1) < 200
    stronger_h = View(hed=(0.3, 0.0, 0.0, 0.0, 0.0, 0.0))
    out = apply_view(region, stronger_h, 0.0)
    before, after = densities(region)[tissue], densities(out)[tissue]
    ratio = after[:, 0].mean() / before[:, 0].mean()
    assert 1.2 < ratio < 1.4  # haematoxylin up 30% (less what uint8 clipping takes)
    assert abs(after[:, 1].mean() / before[:, 1].mean() - 1) < 0.05  # eosin as it was
    # no change at zero strength (up to the round trip's rounding)
    same = apply_view(region, View(hed=(0.0,) * 6), 0.0).astype(int)
    assert np.abs(same - region).max() <= 1
    # drawn per view with the colour chance, within the strength; no stain draws at sigma 0
    views = draw_views(view_rng(1, 0, 0), 400, flips=False, jitter=False, jitter_p=0.5, stain_sigma=0.05)
    drawn = np.array([v.hed for v in views if v.hed])
    assert 150 < len(drawn) < 250 and np.abs(drawn).max() <= 0.05 and drawn.std() > 0.02
    assert all(v.jittered for v in views if v.hed)
    assert not any(v.hed for v in draw_views(view_rng(1, 0, 0), 50, flips=True, jitter=True))
