"""GeoJSON exports: areas match the label counts, one feature per region."""

from __future__ import annotations

import json

import numpy as np
import pytest

from feature_sets import MPP, STEP, feature_set, grid_coords
from napari_xmag import maps
from napari_xmag.maps import (
    labels_to_geojson,
    write_geojson,
)
from napari_xmag.maps.geojson import label_polygons


# ---- GeoJSON --------------------------------------------------------------------------------
def test_geojson_areas_match_the_label_counts(tmp_path, label_map) -> None:
    from shapely.geometry import shape

    path = write_geojson(tmp_path / "k.geojson", label_map)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and data["xmag"]["slide_mpp"] == MPP
    cell_area = STEP * STEP
    assert data["xmag"]["cell_area_level0"] == cell_area
    assert len(data["features"]) == 4  # one per class
    for feat in data["features"]:
        geom = shape(feat["geometry"])
        props = feat["properties"]
        label = props["xmag_label"]
        assert feat["geometry"]["type"] == "MultiPolygon"
        assert geom.is_valid
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": f"cluster {label}", "color": label_map.colors[label - 1]}
        cells = int((label_map.data == label).sum())
        assert geom.area == pytest.approx(cells * cell_area, rel=1e-9, abs=1.0)
        assert props["xmag_cells"] == cells
    # the ring has a hole exactly where the inner class is; coordinates are level-0 px
    ring_label = int(label_map.data[1, 1])
    inner_label = int(label_map.data[3, 3])
    polys = label_polygons(label_map)
    ring = polys[ring_label]
    assert len(ring.interiors) == 1
    x0, y0 = 0.0, 400.0  # the top-left patch
    assert polys[inner_label].bounds == (x0 + 2 * STEP, y0 + 2 * STEP, x0 + 5 * STEP, y0 + 5 * STEP)
    assert ring.bounds == (x0 + STEP, y0 + STEP, x0 + 6 * STEP, y0 + 6 * STEP)


def test_geojson_one_feature_per_region(label_map) -> None:
    from scipy import ndimage
    from shapely.geometry import shape

    data = labels_to_geojson(label_map, split="region")
    for label in range(1, 5):
        feats = [f for f in data["features"] if f["properties"]["xmag_label"] == label]
        _, regions = ndimage.label(label_map.data == label)  # 4-connectivity
        assert len(feats) == regions
        assert all(f["geometry"]["type"] == "Polygon" and shape(f["geometry"]).is_valid for f in feats)
        total = sum(shape(f["geometry"]).area for f in feats)
        assert total == pytest.approx((label_map.data == label).sum() * STEP * STEP)
    blobs = [f for f in data["features"] if f["properties"]["xmag_label"] == int(label_map.data[0, 11])]
    assert len(blobs) == 3


def test_geojson_of_overlapping_stride_keeps_exact_areas(tmp_path) -> None:
    """Cells of half a patch (stride = patch / 2) at non-integer level-0 steps."""
    coords = grid_coords(np.array([449, 898, 1347, 1796]), np.array([0, 449, 898]))
    rng = np.random.default_rng(3)
    fs = feature_set(coords, rng.normal(size=(12, 8)), slide_mpp=0.499, mpp=2.0, patch=224, stride=112)
    m = maps.kmeans_map(fs, 3)
    from shapely.geometry import shape

    data = labels_to_geojson(m)
    total = 0.0
    for feat in data["features"]:
        geom = shape(feat["geometry"])
        assert geom.is_valid
        cells = (m.data == feat["properties"]["xmag_label"]).sum()
        assert geom.area == pytest.approx(cells * 449.0 * 449.0, rel=1e-6)
        total += geom.area
    assert total == pytest.approx((m.data > 0).sum() * 449.0**2, rel=1e-6)
