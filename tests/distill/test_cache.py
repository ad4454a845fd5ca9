"""The teacher-target cache holds each flip variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cases import CMU1
from napari_xmag.distill import (
    PairDataset,
    TeacherCache,
    View,
    apply_view,
    build_teacher_cache,
)
from napari_xmag.distill.pairs import read_pair
from napari_xmag.distill.teacher import embed_crops
from napari_xmag.models import create_model
from napari_xmag.slide import Slide


def test_cache_holds_the_teacher_of_each_flip_variant(few_pairs, tmp_path) -> None:
    teacher = create_model("uni2-h", weights="random", tiny=True, overrides={"init_values": 1.0})
    cache = build_teacher_cache(tmp_path / "c.zarr", few_pairs, teacher, flips=True, progress=False)
    assert cache.attrs["variants"] == ["none", "h", "v", "hv"] and len(cache) == len(few_pairs)
    geometry = few_pairs.geometries[0]
    with Slide(CMU1.path) as slide:
        for row, (x, y) in enumerate(few_pairs.coords[:3]):
            student, region = read_pair(slide, geometry, int(x), int(y), "downsample")
            np.testing.assert_array_equal(cache.student(row), student)
            for variant, view in enumerate([View(), View(hflip=True), View(vflip=True), View(True, True)]):
                crops = torch.from_numpy(geometry.split(apply_view(region, view, 0.0)))
                expected = embed_crops(teacher, crops).numpy()
                np.testing.assert_allclose(cache.targets(row, [variant])[0], expected, atol=2e-3, rtol=2e-3)
    # the dataset serves the variant of each view's flips, and refuses jitter with a cache
    subset = few_pairs.subset([5, 2])  # a subset addresses the cache by its rows
    dataset = PairDataset(subset, views=2, flips=True, jitter=False, seed=1, cache=TeacherCache(cache.path))
    item = dataset[(0, 0)]
    for v, student, target in zip(dataset.draw(0, 0), item["student"], item["target"], strict=True):
        np.testing.assert_array_equal(student, apply_view(cache.student(5), v, 0.0))
        np.testing.assert_array_equal(target, cache.targets(5, [v.variant])[0])
    with pytest.raises(ValueError, match="whole PairIndex"):
        build_teacher_cache(tmp_path / "d.zarr", subset, teacher)
    # with jitter the cache serves the views it holds; a jittered view comes with its crops,
    # exactly as an uncached dataset makes them, for the live teacher
    for style in ("shared", "torchvision"):
        kw = {"views": 4, "flips": True, "jitter": True, "jitter_p": 0.5, "seed": 2, "jitter_style": style}
        cached, uncached = PairDataset(few_pairs, cache=cache, **kw), PairDataset(few_pairs, **kw)
        live_views = 0
        for position in range(4):
            a, b = cached[(position, 0)], uncached[(position, 0)]
            np.testing.assert_array_equal(a["student"], b["student"])
            for k, view in enumerate(cached.draw(position, 0)):
                assert a["live"][k] == view.jittered
                if view.jittered:
                    np.testing.assert_array_equal(a["teacher"][k], b["teacher"][k])
                    live_views += 1
                else:
                    assert not a["teacher"][k].any()
                    np.testing.assert_array_equal(a["target"][k], cache.targets(position, [view.variant])[0])
        assert 0 < live_views < 16
    other = create_model("uni2-h", weights="random", tiny=True)  # same name, other architecture
    from napari_xmag.provenance import model_identity

    with pytest.raises(ValueError, match="another teacher"):
        cache.check(few_pairs, model_identity(other), flips=True)
