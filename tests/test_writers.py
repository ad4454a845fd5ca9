"""Writers and their readers: OME-Zarr (read by ome-zarr-py), QuPath GeoJSON (shapely areas),
TRIDENT h5, round trips through napari, refusals, and the reader's probing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_xmag import maps
from napari_xmag._reader import get_map_reader, get_reader, read_maps
from napari_xmag._writer import XmagWriterWarning, map_from_layer
from napari_xmag.features import read_features, write_features
from napari_xmag.maps import (
    WriterError,
    labels_to_geojson,
    read_geojson,
    read_ome_zarr,
    write_geojson,
    write_ome_zarr,
)
from napari_xmag.maps.geojson import label_polygons
from test_maps import feature_set, grid_coords, two_halves

STEP = 200.0  # level-0 px per cell in these maps: 100 px patches at 1 µm/px on a 0.5 µm/px scan
MPP = 0.5

# Classes of a 10 x 12 grid of patches (no overlap): 1 is a ring around 2 (a hole), 3 fills the
# rest, 4 is two blobs (two regions), one touching 3 only at a corner of another 4.
PATTERN = np.full((10, 12), 3)
PATTERN[1:6, 1:6] = 1
PATTERN[2:5, 2:5] = 2
PATTERN[7:9, 8:10] = 4
PATTERN[9, 11] = 4  # diagonal neighbour of (8, 9)... not 4-connected: its own region
PATTERN[0, 11] = 4


def pattern_features(pattern=PATTERN) -> maps.FeatureSet:
    rows, cols = pattern.shape
    coords = grid_coords(np.arange(cols) * 200, np.arange(rows) * 200 + 400)
    one_hot = np.eye(8)[pattern.ravel()]
    return feature_set(coords, one_hot, patch=100, stride=100)


@pytest.fixture(scope="module")
def label_map() -> maps.SlideMap:
    m = maps.kmeans_map(pattern_features(), 4)
    # k-means recovers the pattern up to the names of the clusters
    pairs = set(zip(PATTERN.ravel().tolist(), m.data.ravel().tolist(), strict=True))
    assert len(pairs) == 4
    return m


@pytest.fixture(scope="module")
def heat_map() -> maps.SlideMap:
    """70 x 90 cells of value 1000 r + c, NaN on a diagonal band (not scored)."""
    coords = grid_coords(np.arange(90) * 200, np.arange(70) * 200)
    fs = feature_set(coords, np.zeros((len(coords), 2)), patch=100, stride=100)
    r, c = coords[:, 1] // 200, coords[:, 0] // 200
    values = np.where(np.abs(r - c) < 3, np.nan, 1000.0 * r + c)
    return maps.attention_map(fs, coords, values)


def ome_nodes(path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path), fmt=FormatV04()))())


# ---- OME-Zarr -------------------------------------------------------------------------------
def test_heatmap_read_by_ome_zarr_py(tmp_path, heat_map) -> None:
    path = write_ome_zarr(tmp_path / "heat.ome.zarr", heat_map)
    [node] = ome_nodes(path)
    assert [d.shape for d in node.data] == [(70, 90), (35, 45), (18, 23)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), heat_map.data)
    assert node.metadata["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    level0, level1, level2 = node.metadata["coordinateTransformations"]
    assert level0 == [{"type": "scale", "scale": [100.0, 100.0]},
                      {"type": "translation", "translation": [49.75, 49.75]}]  # (0 - .5 + 100) * .5
    # level 1 averages 2 x 2 cells: twice the scale, centred half a cell further
    assert level1 == [{"type": "scale", "scale": [200.0, 200.0]},
                      {"type": "translation", "translation": [99.75, 99.75]}]
    assert level2[0]["scale"] == [400.0, 400.0] and level2[1]["translation"] == [199.75, 199.75]
    lvl1 = np.asarray(node.data[1])
    assert lvl1[0, 10] == pytest.approx(np.mean([20, 21, 1020, 1021]))
    assert lvl1[0, 1] == 3.0  # cells (0, 2), (1, 2), (1, 3) are NaN: left out
    assert np.isnan(lvl1[0, 0])
    attrs = json.loads((path / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    [back] = read_ome_zarr(path)
    np.testing.assert_array_equal(back.data, heat_map.data)
    assert back.scale == heat_map.scale and back.translate == heat_map.translate
    assert back.metadata == heat_map.metadata and back.grid == heat_map.grid


def test_labels_read_by_ome_zarr_py(tmp_path, label_map) -> None:
    path = write_ome_zarr(tmp_path / "k.ome.zarr", label_map)
    nodes = [n for n in ome_nodes(path) if n.data]
    [node] = nodes
    np.testing.assert_array_equal(np.asarray(node.data[0]), label_map.data)
    assert node.metadata["name"] == label_map.name and (path / "kmeans" / "0").is_dir()
    assert node.metadata["color"][1] == pytest.approx([c / 255 for c in label_map.colors[0]] + [1.0])
    assert node.metadata["properties"][4] == {"class": "cluster 4"}
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [100.0, 100.0]
    [back] = read_ome_zarr(path)
    np.testing.assert_array_equal(back.data, label_map.data)
    assert back.kind == "kmeans" and back.classes == label_map.classes and back.colors == label_map.colors
    assert back.scale == label_map.scale and back.translate == label_map.translate


def test_rgb_and_probe_stores(tmp_path) -> None:
    fs, left = two_halves()
    pca = maps.pca_map(fs)
    [node] = ome_nodes(write_ome_zarr(tmp_path / "pca.ome.zarr", pca))
    assert node.data[0].shape == (3, 6, 6) and [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.metadata["channel_names"] == ["PC1", "PC2", "PC3"]
    [back] = read_ome_zarr(tmp_path / "pca.ome.zarr")
    assert back.rgb and back.data.shape == (6, 6, 3)
    np.testing.assert_array_equal(back.data, pca.data)

    from test_maps import fit_probe

    heat, seg = maps.probe_maps(fs, fit_probe(fs, left))
    path = write_ome_zarr(tmp_path / "probe.ome.zarr", [heat, seg])
    shapes = sorted(tuple(n.data[0].shape) for n in ome_nodes(path) if n.data)
    assert shapes == [(2, 6, 6), (6, 6)]
    assert sorted(p.name for p in (path / "labels").iterdir() if p.is_dir()) == ["probe-labels"]
    img, lab = read_ome_zarr(path)
    np.testing.assert_allclose(img.data, heat.data)
    np.testing.assert_array_equal(lab.data, seg.data)
    with pytest.raises(WriterError, match="one image map"):
        write_ome_zarr(tmp_path / "two.ome.zarr", [heat, pca])


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


# ---- napari round trips ---------------------------------------------------------------------
def add(viewer, m):
    from napari.layers import Layer

    return viewer.add_layer(Layer.create(*m.layer_data()))


def test_round_trip_through_napari(make_napari_viewer, tmp_path, heat_map, label_map) -> None:
    import napari

    viewer = make_napari_viewer()
    fs, _ = two_halves()
    fs.coords, fs.features = fs.coords[1:], fs.features[1:]  # a hole: transparent in napari
    pca = maps.pca_map(fs)
    for m, name in ((heat_map, "heat.ome.zarr"), (label_map, "k.ome.zarr"), (pca, "pca.ome.zarr")):
        layer = add(viewer, m)
        path = str(tmp_path / name)
        assert napari.save_layers(path, [layer], plugin="napari-xmag") == [path]
        assert get_map_reader(str(tmp_path / name)) is read_maps
        [back] = viewer.open(str(tmp_path / name), plugin="napari-xmag")
        assert type(back) is type(layer)
        np.testing.assert_allclose(back.scale, m.scale)
        np.testing.assert_allclose(back.translate, m.translate)
        np.testing.assert_array_equal(back.data, layer.data)
        assert back.metadata["xmag_map"]["slide_path"] == "/slides/case.svs"
    rgba = viewer.layers[-1].data
    assert rgba.shape == (6, 6, 4) and rgba[0, 0, 3] == 0 and (rgba[1:, :, 3] == 1).all()


def test_geojson_opens_as_shapes_on_the_slide(make_napari_viewer, tmp_path, label_map) -> None:
    import napari

    viewer = make_napari_viewer()
    layer = add(viewer, label_map)
    path = str(tmp_path / "k.geojson")
    assert napari.save_layers(path, [layer], plugin="napari-xmag") == [path]
    assert get_map_reader(path) is read_maps
    [shapes] = viewer.open(path, plugin="napari-xmag")
    polygons = sum(len(getattr(g, "geoms", [g])) for g in label_polygons(label_map).values())
    assert len(shapes.data) == polygons and shapes.shape_type == ["polygon"] * polygons
    inner = int(label_map.data[3, 3])
    [i] = [k for k, lab in enumerate(shapes.features["label"]) if lab == inner]
    # the inner square's corners: level-0 (400, 800) .. (1000, 1400), drawn at (px - 0.5) * mpp
    ys, xs = shapes.data[i][:, 0], shapes.data[i][:, 1]
    assert (xs.min(), xs.max()) == ((400 - 0.5) * MPP, (1000 - 0.5) * MPP)
    assert (ys.min(), ys.max()) == ((800 - 0.5) * MPP, (1400 - 0.5) * MPP)
    # they coincide with the label map's cell edges in world coordinates
    np.testing.assert_allclose(layer.world_to_data((ys.min(), xs.min())), (1.5, 1.5))
    assert shapes.features["class"][i] == f"cluster {inner}"
    # the ring is drawn with its hole (napari: one polygon, hole walked from the exterior)
    ring = int(label_map.data[1, 1])
    [j] = [k for k, lab in enumerate(shapes.features["label"]) if lab == ring]
    shape_j = shapes._data_view.shapes[j]
    tri = shape_j._face_vertices[shape_j._face_triangles]
    area = 0.5 * np.abs((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
                        - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1])).sum()
    assert area == pytest.approx((25 - 9) * (STEP * MPP) ** 2)


def test_painted_labels_are_saved_with_new_classes(make_napari_viewer, tmp_path, label_map) -> None:
    import napari

    viewer = make_napari_viewer()
    layer = add(viewer, label_map)
    layer.data = np.where(np.arange(12)[None, :] == 0, 7, layer.data).astype(layer.data.dtype)  # paint
    path = str(tmp_path / "painted.geojson")
    assert napari.save_layers(path, [layer], plugin="napari-xmag") == [path]
    ann = read_geojson(path)
    [i] = [k for k, lab in enumerate(ann.labels) if lab == 7]
    assert ann.classes[i] == "label 7" and ann.geometries[i].area == pytest.approx(10 * STEP * STEP)


def test_features_written_as_trident_h5(make_napari_viewer, tmp_path) -> None:
    import napari

    fs, _ = two_halves()
    source = write_features(tmp_path / "case.h5", fs)
    viewer = make_napari_viewer()
    layer = add(viewer, maps.kmeans_map(source, 2))
    out = str(tmp_path / "copy.h5")
    assert napari.save_layers(out, [layer], plugin="napari-xmag") == [out]
    back = read_features(out)
    np.testing.assert_array_equal(back.coords, fs.coords)
    np.testing.assert_array_equal(back.features, fs.features)
    assert back.coords_attrs == read_features(source).coords_attrs
    carried = viewer.add_image(np.zeros((2, 2)), metadata={"xmag_features": fs}, name="carrier")
    path = str(tmp_path / "c.h5")
    assert napari.save_layers(path, [carried], plugin="napari-xmag") == [path]
    np.testing.assert_array_equal(read_features(tmp_path / "c.h5").features, fs.features)


# ---- refusals -------------------------------------------------------------------------------
def test_refusals_are_messages(make_napari_viewer, tmp_path) -> None:
    import napari

    viewer = make_napari_viewer()
    plain = viewer.add_image(np.zeros((4, 4)), name="plain")
    with pytest.warns(XmagWriterWarning, match="layer 'plain' has no slide reference"):
        assert napari.save_layers(str(tmp_path / "p.ome.zarr"), [plain], plugin="napari-xmag") == []
    no_mpp = viewer.add_labels(np.ones((4, 4), np.uint8), name="nompp",
                               metadata={"xmag_map": {"slide_path": "/s.svs"}})
    with pytest.warns(XmagWriterWarning, match="no slide µm/px"):
        assert napari.save_layers(str(tmp_path / "n.geojson"), [no_mpp], plugin="napari-xmag") == []
    with pytest.warns(XmagWriterWarning, match="carries no patch features"):
        assert napari.save_layers(str(tmp_path / "p.h5"), [plain], plugin="napari-xmag") == []
    # through the layer list, as the GUI does: napari's own message follows ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer.layers.selection = {plain}
        assert viewer.layers.save(str(tmp_path / "p2.ome.zarr"), selected=True, plugin="napari-xmag") == []
    messages = [str(w.message) for w in caught]
    assert any("no slide reference" in m for m in messages), messages
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left behind
    with pytest.raises(WriterError, match="is a points layer"):
        map_from_layer(np.zeros((3, 2)), {"name": "pts"}, "points")
    fs, _ = two_halves()
    with pytest.raises(WriterError, match="GeoJSON is written from 2D integer labels"):
        write_geojson(tmp_path / "x.geojson", maps.pca_map(fs))


def test_failed_writes_leave_nothing(tmp_path, heat_map, monkeypatch) -> None:
    from napari_xmag.maps import ome_zarr

    good = write_ome_zarr(tmp_path / "m.ome.zarr", heat_map)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def broken(group, levels):
        group.create_array("0", data=levels[0][:2])
        raise OSError("disk full")

    monkeypatch.setattr(ome_zarr, "_write_levels", broken)
    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(good, heat_map)
    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(tmp_path / "new.ome.zarr", heat_map)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # old store intact
    np.testing.assert_array_equal(read_ome_zarr(good)[0].data, heat_map.data)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---- probing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: str(write_features(tmp / "slide.zarr", feature_set([[0, 0]]))),  # a features store
        lambda tmp: str(write_features(tmp / "slide.h5", feature_set([[0, 0]]))),
        lambda tmp: write(tmp / "q.geojson", '{"type": "FeatureCollection", "features": []}'),
        lambda tmp: write(tmp / "bad.geojson", '{"xmag": "napari-xmag-geojson", '),
        lambda tmp: (tmp / "file.zarr").write_bytes(b"x") and str(tmp / "file.zarr"),
        lambda tmp: str(tmp / "missing.ome.zarr"),
        lambda tmp: str(tmp),
        lambda tmp: [],
    ],
    ids=["features-zarr", "features-h5", "plain-geojson", "broken-geojson", "zarr-file", "missing", "folder",
         "none"],
)
def test_get_map_reader_declines_without_raising(tmp_path, make) -> None:
    assert get_map_reader(make(tmp_path)) is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ome_zarr.*", "ignore:Dimension:UserWarning")
def test_other_ome_zarr_is_not_ours(tmp_path, heat_map) -> None:
    path = write_ome_zarr(tmp_path / "m.ome.zarr", heat_map)
    assert get_map_reader(str(path)) is read_maps and get_map_reader(str(path) + "/") is read_maps
    assert get_map_reader([str(path), str(tmp_path / "nope.geojson")]) is None
    assert get_reader(str(path)) is None  # the slide reader leaves it alone
    attrs = json.loads((path / ".zattrs").read_text())
    del attrs["xmag"]
    (path / ".zattrs").write_text(json.dumps(attrs))  # now just an OME-Zarr image
    assert get_map_reader(str(path)) is None
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    other = tmp_path / "other.ome.zarr"
    write_image(np.zeros((8, 8), np.uint8), zarr.open_group(str(other), mode="w", zarr_format=2), axes="yx",
                fmt=FormatV04())
    assert (other / ".zattrs").is_file() and get_map_reader(str(other)) is None
