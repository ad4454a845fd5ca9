"""OME-Zarr map stores, read back by ome-zarr-py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from feature_sets import ome_nodes, two_halves
from napari_xmag import maps
from napari_xmag.maps import (
    WriterError,
    read_ome_zarr,
    write_ome_zarr,
)


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

    from feature_sets import fit_probe

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
