"""The napari writer: layers saved as maps, painted labels, features, refusals, nothing half-written."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from feature_sets import STEP, add, two_halves
from napari_xmag import maps
from napari_xmag._reader import get_map_reader, read_maps
from napari_xmag._writer import XmagWriterWarning, map_from_layer
from napari_xmag.features import read_features, write_features
from napari_xmag.maps import (
    WriterError,
    read_geojson,
    read_ome_zarr,
    write_geojson,
    write_ome_zarr,
)


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
