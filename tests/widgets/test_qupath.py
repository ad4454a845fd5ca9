"""QuPath annotations in: a GeoJSON written by QuPath's rules (File > Export objects as GeoJSON:
a FeatureCollection of Polygon / MultiPolygon features in level-0 pixels, ``properties.objectType``
"annotation", ``properties.classification`` with a name and an RGB colour, no napari-xmag member)
opens over CMU-1 as a Shapes layer, aligned to the pixel, and trains the few-shot probe; our own
export comes back through the same reader."""

from __future__ import annotations

import numpy as np
import pytest

from cases import CMU1
from qupath import BLUE, RED, qupath_geojson
from viewers import open_slide, owned, wait_for

MPP = 0.499


@pytest.fixture(scope="module")
def cmu1_features(tmp_path_factory):
    """CMU-1 at 5x, stride 112 (18 patches), by the tiny random student."""
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.features import read_features
    from napari_xmag.models import create_model

    out = tmp_path_factory.mktemp("cmu1-features")
    model = create_model("xmag", weights="random", tiny=True, overrides={"init_values": 1.0})
    settings = EmbedSettings(mpp=2.0, stride=112, device="cpu", workers=2)
    path = embed_slide(CMU1.path, model, out, settings, progress=False).output
    return path, read_features(path)


def test_opens_aligned_and_trains_the_probe(make_napari_viewer, qtbot, tmp_path, cmu1_features) -> None:
    from napari.layers import Shapes

    from napari_xmag._widgets.probe import ProbeWidget

    features, data = cmu1_features
    geo = qupath_geojson(tmp_path / "CMU-1 annotations.geojson", data)
    viewer = make_napari_viewer()
    slide = open_slide(viewer, CMU1.path)
    [shapes] = viewer.open(str(tmp_path / "CMU-1 annotations.geojson"), plugin="napari-xmag")
    assert isinstance(shapes, Shapes) and shapes.name == "annotations · CMU-1 annotations"
    assert shapes.nshapes == 3  # the Polygon, the MultiPolygon's two parts; the Point skipped
    assert list(shapes.features["class"]) == ["Tumor", "Stroma", "Stroma"]
    np.testing.assert_allclose(shapes.edge_color[0, :3], np.array(RED) / 255, atol=1 / 255)
    np.testing.assert_allclose(shapes.edge_color[1, :3], np.array(BLUE) / 255, atol=1 / 255)

    # aligned to the pixel: each vertex lands on the level-0 pixel edge QuPath gave
    for drawn, given in ((shapes.data[0], geo["tumour"]), (shapes.data[1], geo["stroma"][0])):
        pixels = np.array([slide.world_to_data(shapes.data_to_world(v)) for v in drawn])[:, -2:]
        edges = pixels + 0.5  # napari: pixel x spans [x - 0.5, x + 0.5); QuPath: [x, x + 1)
        expected = given[:-1, ::-1]  # (y, x), the ring's closing vertex dropped
        got = edges[np.lexsort(edges.T)]
        want = expected[np.lexsort(expected.T)]
        assert np.abs(got - want).max() <= 1.0, (got, want)

    widget = ProbeWidget(viewer)
    assert shapes in widget._annotations_edit.choices
    widget._features_edit.value = features
    widget._annotations_edit.value = shapes
    widget._on_train()
    wait_for(qtbot, widget.task)
    status = widget._status.value
    assert status.startswith(f"probe trained on {geo['n_tumour'] + geo['n_stroma']} patches"), status
    assert f"Tumor: {geo['n_tumour']}" in status and f"Stroma: {geo['n_stroma']}" in status
    heat = [layer.name for layer in owned(viewer, "xmag-probe", "heatmaps")]
    assert heat == ["probe Tumor · CMU-1-Small-Region · random weights",
                    "probe Stroma · CMU-1-Small-Region · random weights"]
    key = [name for name, _ in widget.legend.entries[-1].classes]
    assert key == ["Tumor", "Stroma"]


def test_our_export_comes_back_through_the_same_reader(make_napari_viewer, tmp_path, cmu1_features) -> None:
    from napari_xmag import maps
    from napari_xmag._writer import write_labels_geojson

    features, _ = cmu1_features
    seg = maps.kmeans_map(features, 3)
    data, kwargs, _ = seg.layer_data()
    [written] = write_labels_geojson(str(tmp_path / "clusters.geojson"), data, kwargs)
    viewer = make_napari_viewer()
    open_slide(viewer, CMU1.path)
    [shapes] = viewer.open(written, plugin="napari-xmag")
    assert set(shapes.features["class"]) == set(seg.classes)
    # every patch cell comes back inside the polygon of its own cluster
    import shapely

    from napari_xmag.maps import MapGrid

    grid = MapGrid.from_dict(kwargs["metadata"]["xmag_map"]["grid"])  # the grid the layer is drawn on
    for cls in seg.classes:
        classes = shapes.features["class"]
        polys = [shapely.Polygon(v[:, ::-1]) for v, c in zip(shapes.data, classes, strict=True) if c == cls]
        inside = shapely.union_all(polys)
        cells = np.argwhere(data == seg.classes.index(cls) + 1)
        centres = grid.translate + cells * grid.scale  # world µm (y, x) of the cell centres
        assert all(inside.contains(shapely.Point(x, y)) for y, x in centres), cls
