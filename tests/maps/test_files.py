"""Maps of real features as files: `xmag maps` writes every kind, and they lie on the slide in napari."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cases import CMU1
from comparisons import write_comparison
from feature_sets import feature_set, fit_probe, two_halves
from napari_xmag import maps
from napari_xmag.cli import main
from napari_xmag.features import read_features, write_features


def test_maps_of_real_features(cmu1_features) -> None:
    fs = read_features(cmu1_features)
    m = maps.pca_map(cmu1_features)
    assert m.grid is not None and (m.grid.step_x, m.grid.span) == (449.0, (2, 2))
    assert m.metadata["slide_path"] == str(CMU1.path) and m.metadata["weights_random"] is True
    assert m.metadata["features_path"] == str(Path(cmu1_features).resolve())
    km = maps.kmeans_map(cmu1_features, 3)
    rows, cols = km.grid.cells(fs.coords)
    span = np.zeros(km.data.shape, bool)
    for r, c in zip(rows, cols, strict=True):
        span[r:r + 2, c:c + 2] = True
    assert ((km.data > 0) == span).all()  # labels exactly where patches are


def test_map_aligns_with_the_slide_in_napari(make_napari_viewer, cmu1_features) -> None:
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(CMU1.path), plugin="napari-xmag")
    m = maps.kmeans_map(cmu1_features, 3)
    layer = viewer.add_layer(__import__("napari").layers.Layer.create(*m.layer_data()))
    fs = read_features(cmu1_features)
    rows, cols = m.grid.cells(fs.coords)
    size0 = fs.coords_attrs["patch_size_level0_exact"]
    # CMU-1's last 5x patches reach past its edge: the layer is drawn at k sub-cells per cell,
    # the sub-cells past the edge empty, so the map ends with the slide
    k = layer.metadata["xmag_map"]["display_subcells"]
    assert k == 8 and layer.data.shape == (m.data.shape[0] * k, m.data.shape[1] * k)
    for (x, y), r, c in zip(fs.coords, rows, cols, strict=True):
        # a patch's top-left corner is the top-left edge of level-0 pixel (x, y): data (y - .5, x - .5)
        top_left = slide.data_to_world((y - 0.5, x - 0.5))
        np.testing.assert_allclose(top_left, ((y - 0.5) * 0.499, (x - 0.5) * 0.499))
        np.testing.assert_allclose(layer.world_to_data(top_left), (r * k - 0.5, c * k - 0.5), atol=1e-9)
        # the cells it covers end span * step later; its own edge is 897.8 px: 0.2 px = 0.0005 cell short
        edge = ((r + 2) * k - 0.5, (c + 2) * k - 0.5)
        bottom_right = slide.data_to_world((y + 2 * 449 - 0.5, x + 2 * 449 - 0.5))
        np.testing.assert_allclose(layer.world_to_data(bottom_right), edge, atol=1e-9)
        real = slide.data_to_world((y + size0 - 0.5, x + size0 - 0.5))
        np.testing.assert_allclose(layer.world_to_data(real), edge, atol=1e-2)
        # napari picks the map value of cell (r, c) inside the patch's first cell
        inside = slide.data_to_world((y + 449 / 2, x + 449 / 2))
        assert layer.get_value(inside, world=True) == m.data[r, c] > 0
    # the map ends with the slide (2967 x 2220 px): a sub-cell is drawn when its centre is on the
    # slide, so the last one's far edge is within half a sub-cell (449 / 16 px) of the slide's
    ys, xs = np.nonzero(np.asarray(layer.data))
    last = np.asarray(layer.data_to_world((ys.max() + 0.5, xs.max() + 0.5)))  # its far edge, µm
    slide_edge = np.asarray(slide.data_to_world((2967 - 0.5, 2220 - 0.5)))
    half = 449 / k / 2 * 0.499
    assert np.all(np.abs(last - slide_edge) <= half + 1e-6), (last, slide_edge)
    assert m.data.shape[1] * 449 > 2220  # the cells themselves reach past it


# ---- CLI ------------------------------------------------------------------------------------
def test_cli_maps(tmp_path, capsys, cmu1_features) -> None:
    out = tmp_path / "k.ome.zarr"
    assert main(["maps", str(cmu1_features), "--kind", "kmeans", "--clusters", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "kmeans 7x5" in printed.out and str(out) in printed.out
    assert "RANDOM WEIGHTS" in printed.err
    from napari_xmag.maps import read_ome_zarr

    [m] = read_ome_zarr(out)
    np.testing.assert_array_equal(m.data, maps.kmeans_map(cmu1_features, 3).data)
    assert main(["maps", str(cmu1_features), "--kind", "kmeans", "--out", str(tmp_path / "k.geojson")]) == 0
    assert (tmp_path / "k.geojson").is_file()


def test_cli_probe_attention_cosine(tmp_path, capsys) -> None:
    fs, left = two_halves()
    feats = write_features(tmp_path / "case.h5", fs)
    probe = maps.save_probe(fit_probe(fs, left), tmp_path / "probe.npz")
    out = ["--out", str(tmp_path / "p.ome.zarr")]
    assert main(["maps", str(feats), "--kind", "probe", "--probe", str(probe), *out]) == 0
    import h5py

    with h5py.File(tmp_path / "att.h5", "w") as f:
        f["coords"], f["attention"] = fs.coords, np.linspace(0, 1, len(fs.coords))
    assert main(["maps", str(feats), "--kind", "attention", "--attention", str(tmp_path / "att.h5"),
                 "--out", str(tmp_path / "a.ome.zarr")]) == 0
    cmp_dir = write_comparison(tmp_path / "cmp", [[898, 0], [898, 898]], [0.5, np.nan])
    out = ["--out", str(tmp_path / "c.ome.zarr")]
    assert main(["maps", "--kind", "cosine", "--comparison", str(cmp_dir), *out]) == 0
    printed = capsys.readouterr().out
    for line in ("probe 2x6x6", "probe-labels 6x6", "attention 6x6", "cosine 2x1"):
        assert line in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing.h5", "--kind", "pca"], "missing.h5: no such features file"),
        (["{feats}", "--kind", "umap"],
         "map kind must be one of pca, kmeans, probe, attention, cosine, not 'umap'"),
        (["{feats}", "--kind", "probe", "--probe", "{wide}"],
         "the probe expects 32 features per patch, the file has 16"),
        (["{feats}", "--kind", "probe"], "a probe map needs a probe"),
        (["{feats}", "--kind", "cosine"], "a cosine map needs a comparison folder"),
        (["{feats}", "--kind", "pca", "--out-geojson"], None),
        (["{feats}", "--kind", "probe", "--probe", "{tmp}/nope.npz"], "nope.npz: no such probe file"),
    ],
    ids=["missing", "kind", "probe-width", "no-probe", "no-comparison", "geojson-of-image", "no-probe-file"],
)
def test_cli_errors(tmp_path, capsys, args, message) -> None:
    fs, left = two_halves()
    feats = write_features(tmp_path / "case.h5", fs)
    wide = feature_set(fs.coords, np.random.default_rng(0).normal(size=(36, 32)), patch=100, stride=100)
    wide_probe = maps.save_probe(fit_probe(wide, left), tmp_path / "wide.npz")
    out = ["--out", str(tmp_path / "m.ome.zarr")]
    if "--out-geojson" in args:
        args = [a for a in args if a != "--out-geojson"]
        out = ["--out", str(tmp_path / "m.geojson")]
        message = "GeoJSON holds one label map"
    argv = [a.format(tmp=tmp_path, feats=feats, wide=wide_probe) for a in args]
    assert main(["maps", *argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xmag maps: error: ") and message in err, err
    assert not (tmp_path / "m.ome.zarr").exists() and not (tmp_path / "m.geojson").exists()
