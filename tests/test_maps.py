"""Maps: grid geometry by hand, overlap averaging, each map kind, the cache, napari alignment, CLI."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CMU1
from napari_xmag import maps
from napari_xmag.cli import main
from napari_xmag.compare import cosine_map
from napari_xmag.features import FeatureSet, read_features, write_features
from napari_xmag.formats.attention import attention_values
from napari_xmag.maps import MapError, MapGrid


def feature_set(coords, features=None, *, slide_mpp=0.5, mpp=1.0, patch=100, stride=50, dim=8, **attrs):
    """A features file's content with known geometry: patch px at mpp over a slide_mpp scan."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if features is None:
        features = np.random.default_rng(0).normal(size=(len(coords), dim))
    return FeatureSet(
        coords=coords,
        features=np.asarray(features, np.float32),
        attrs={"slide_mpp": slide_mpp, "slide_path": "/slides/case.svs", "model": "xmag",
               "weights_random": True, "mpp": mpp, "stride": stride, **attrs},
        coords_attrs={"patch_size": patch, "patch_size_level0": round(patch * mpp / slide_mpp),
                      "patch_size_level0_exact": patch * mpp / slide_mpp, "stride": stride, "mpp": mpp,
                      "name": "case"},
    )


def grid_coords(xs, ys) -> np.ndarray:
    """Row-major (y outer, x inner) level-0 x, y origins."""
    return np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)


# A 3 x 3 grid of 200 px patches, 100 px apart (stride = patch / 2), at (50 + 100 c, 30 + 100 r),
# patch value 3 r + c. Every inner map cell is covered by 4 patches.
XS, YS = np.array([50, 150, 250]), np.array([30, 130, 230])
OVERLAP_MEANS = np.array([
    [0.0, 0.5, 1.5, 2.0],
    [1.5, 2.0, 3.0, 3.5],
    [4.5, 5.0, 6.0, 6.5],
    [6.0, 6.5, 7.5, 8.0],
])


@pytest.fixture
def overlap():
    return feature_set(grid_coords(XS, YS))


# ---- geometry -------------------------------------------------------------------------------
def test_scale_and_translate_by_hand() -> None:
    """CMU-1 numbers: 0.499 µm/px, 224 px at 2.0 µm/px = 897.8 level-0 px, stride 112 px; the
    grid's origins are rounded to 449 px steps (round(112 * 4.008))."""
    coords = grid_coords(np.array([449, 898, 1347]), np.array([898, 1347]))
    fs = feature_set(coords, slide_mpp=0.499, mpp=2.0, patch=224, stride=112)
    grid = maps.grid_for_features(fs)
    assert (grid.step_x, grid.step_y) == (449.0, 449.0)  # read from the coords, not 448.9
    assert grid.span == (2, 2)  # 897.8 / 449 -> the centres of 2 cells per axis
    assert grid.shape == (3, 4)  # 2 origins + 1, 3 origins + 1
    np.testing.assert_allclose(grid.scale, (449 * 0.499, 449 * 0.499))  # 224.051 µm
    # translate = (x0 - 0.5) * mpp + 0.5 * step * mpp = (449 - 0.5 + 224.5) * 0.499
    np.testing.assert_allclose(grid.translate, (1122 * 0.499, 673 * 0.499))
    np.testing.assert_allclose(grid.translate, (559.878, 335.827))
    rows, cols = grid.cells(coords)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [0, 1, 2, 0, 1, 2]
    assert grid.cell_bounds(1, 2) == (449 + 2 * 449, 898 + 449, 449 + 3 * 449, 898 + 2 * 449)


def test_cell_edges_land_on_level0_pixel_edges() -> None:
    """Data pixel i of a map is drawn centred at translate + i * scale: its left edge, at
    translate - scale / 2 + i * scale, is level-0 x0 + i * step, i.e. (x0 + i step - 0.5) * mpp."""
    grid = MapGrid(x0=449, y0=898, step_x=449, step_y=449, patch_x=897.8, patch_y=897.8, rows=3, cols=4,
                   slide_mpp=0.499)
    for i in range(4):
        left = grid.translate[1] - grid.scale[1] / 2 + i * grid.scale[1]
        assert left == pytest.approx((449 + i * 449 - 0.5) * 0.499)
    back = MapGrid.from_transform(grid.scale, grid.translate, 0.499, grid.shape)
    assert (back.x0, back.y0, back.step_x) == pytest.approx((449, 898, 449))


def test_trident_attributes_give_the_same_grid() -> None:
    """A TRIDENT file has patch_size_level0 and overlap (target px), no stride or slide mpp."""
    coords = grid_coords(np.array([0, 100, 200]), np.array([0, 100]))
    fs = FeatureSet(coords, np.zeros((6, 4), np.float32), {},
                    {"patch_size": 256, "patch_size_level0": 200, "overlap": 128, "name": "t"})
    with pytest.raises(MapError, match="slide µm/px"):
        maps.grid_for_features(fs)  # a missing mpp is said, not guessed
    grid = maps.grid_for_features(fs, slide_mpp=0.25)
    assert (grid.step_x, grid.patch_x, grid.span, grid.shape) == (100.0, 200.0, (2, 2), (3, 4))


def test_off_grid_coords_are_refused(overlap) -> None:
    grid = maps.grid_for_features(overlap)
    with pytest.raises(MapError, match=r"patch \(95, 30\) is not on the map's grid"):
        grid.cells(np.array([[95, 30]]))
    with pytest.raises(MapError, match="regular grid"):
        maps.build_grid(np.array([[0, 0], [100, 0], [130, 0]]), 100, 100, 0.5)


# ---- averaging ------------------------------------------------------------------------------
def test_overlapping_patches_are_averaged(overlap) -> None:
    m = maps.attention_map(overlap, overlap.coords, np.arange(9.0))
    assert m.data.shape == (4, 4) and m.data.dtype == np.float32
    np.testing.assert_allclose(m.data, OVERLAP_MEANS)
    np.testing.assert_allclose(m.scale, (50, 50))  # 100 level-0 px at 0.5 µm/px
    np.testing.assert_allclose(m.translate, ((30 - 0.5 + 50) * 0.5, (50 - 0.5 + 50) * 0.5))


def test_missing_patches_and_nan_values(overlap) -> None:
    keep = np.arange(9) != 4  # no centre patch
    values = np.arange(9.0)
    values[8] = np.nan  # e.g. a cosine that was not scored
    m = maps.attention_map(overlap, overlap.coords[keep], values[keep])
    assert m.data[1, 1] == pytest.approx((0 + 1 + 3) / 3)
    assert m.data[2, 2] == pytest.approx((5 + 7) / 2)  # 4 absent, 8 NaN: left out
    assert np.isnan(m.data[3, 3])  # only the NaN patch covers it
    assert m.data[0, 0] == 0.0


def test_vector_values_are_averaged_per_channel(overlap) -> None:
    grid = maps.grid_for_features(overlap)
    rows, cols = grid.cells(overlap.coords)
    v = np.stack([np.arange(9.0), 10 * np.arange(9.0)], axis=1)
    out = maps.rasterize_mean(grid, rows, cols, v)
    assert out.shape == (2, 4, 4)
    np.testing.assert_allclose(out[0], OVERLAP_MEANS)
    np.testing.assert_allclose(out[1], 10 * OVERLAP_MEANS)


def test_cells_no_patch_covers_are_empty() -> None:
    coords = np.array([[0, 0], [200, 200]])  # stride 100: a gap between them
    fs = feature_set(coords)
    m = maps.attention_map(fs, coords, np.array([1.0, 2.0]))
    assert m.data.shape == (4, 4)
    expected = np.full((4, 4), np.nan)
    expected[:2, :2], expected[2:, 2:] = 1.0, 2.0
    np.testing.assert_array_equal(m.data, expected)


def test_labels_take_the_majority() -> None:
    grid = MapGrid(x0=0, y0=0, step_x=100, step_y=100, patch_x=200, patch_y=200, rows=4, cols=4,
                   slide_mpp=0.5)
    rows, cols = np.divmod(np.arange(9), 3)
    labels = np.array([[1, 1, 2], [1, 2, 2], [3, 3, 3]]).ravel()
    out = maps.rasterize_labels(grid, rows, cols, labels)
    assert out[1, 1] == 1  # patches 1, 1, 1, 2
    assert out[1, 2] == 2  # 1, 2, 2, 2
    assert out[2, 1] == 3  # 1, 2, 3, 3
    assert out[0, 2] == 1  # 1 vs 2, equidistant centres: the smaller label
    assert out[3, 3] == 3 and out[0, 0] == 1


def test_label_ties_go_to_the_nearest_patch_centre() -> None:
    """Patches of 3 cells, 1 cell apart: cell 1 is A's centre cell and B's first."""
    grid = MapGrid(x0=0, y0=0, step_x=100, step_y=100, patch_x=300, patch_y=100, rows=1, cols=4,
                   slide_mpp=0.5)
    out = maps.rasterize_labels(grid, np.array([0, 0]), np.array([0, 1]), np.array([2, 1]))
    assert out.tolist() == [[2, 2, 1, 1]]  # cell 1: A (label 2) is nearer; cell 2: B is


# ---- kinds ----------------------------------------------------------------------------------
def two_halves(n=6, dim=16, noise=0.05):
    """N x n patches without overlap; the left half's features differ from the right half's."""
    coords = grid_coords(np.arange(n) * 200, np.arange(n) * 200)  # 100 px at 1 µm/px, 0.5 µm/px scan
    rng = np.random.default_rng(1)
    left = coords[:, 0] < n * 100
    centres = np.where(left[:, None], 1.0, -1.0) * np.ones(dim)
    features = centres + noise * rng.normal(size=(len(coords), dim))
    return feature_set(coords, features, patch=100, stride=100), left


def test_pca_map_shape_and_range() -> None:
    fs, _ = two_halves()
    fs.coords = fs.coords[1:]  # one patch missing: NaN there
    fs.features = fs.features[1:]
    m = maps.pca_map(fs)
    assert m.kind == "pca" and m.rgb and m.data.shape == (6, 6, 3) and m.data.dtype == np.float32
    assert np.isnan(m.data[0, 0]).all()
    finite = m.data[np.isfinite(m.data)]
    assert finite.size == 35 * 3 and finite.min() >= 0.0 and finite.max() <= 1.0
    assert finite.min() == 0.0 and finite.max() == 1.0  # robust-scaled to the full range
    # the first component separates the halves
    pc1 = m.data[..., 0]
    assert abs(np.nanmean(pc1[:, :3]) - np.nanmean(pc1[:, 3:])) > 0.8
    u8 = maps.pca_map(fs, dtype="uint8")
    assert u8.data.dtype == np.uint8 and (u8.data[0, 0] == 0).all()
    np.testing.assert_array_equal(u8.data[1:], np.rint(m.data[1:] * 255).astype(np.uint8))


def test_kmeans_labels() -> None:
    fs, _ = two_halves()
    m = maps.kmeans_map(fs, 2)
    assert m.is_labels and m.data.shape == (6, 6) and m.data.dtype == np.uint8
    assert set(np.unique(m.data)) == {1, 2}
    assert len(set(m.data[:, :3].ravel())) == 1 and len(set(m.data[:, 3:].ravel())) == 1
    assert m.data[0, 0] != m.data[0, 5]
    assert m.classes == ["cluster 1", "cluster 2"] and len(m.colors) == 2
    assert maps.kmeans_map(fs, 2).data.tolist() == m.data.tolist()  # seeded
    board = (fs.coords // 200).sum(axis=1) % 2 == 0  # a checkerboard of patches
    sparse = maps.kmeans_map(feature_set(fs.coords[board], fs.features[board], patch=100, stride=100), 2)
    assert sparse.data.shape == (6, 6)
    assert ((sparse.data == 0) == ~board.reshape(6, 6)).all()  # background where no patch


def fit_probe(fs, left):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.where(left, "tumour", "stroma")
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(fs.features, y)


def test_probe_heatmaps_sum_to_one(overlap) -> None:
    fs, left = two_halves()
    probe = fit_probe(fs, left)
    heat, seg = maps.probe_maps(fs, probe)
    assert heat.data.shape == (2, 6, 6) and heat.classes == ["stroma", "tumour"]
    np.testing.assert_allclose(heat.data.sum(axis=0), 1.0, atol=1e-6)
    assert seg.kind == "probe-labels" and seg.data.dtype == np.uint8
    assert (seg.data[:, :3] == 2).all() and (seg.data[:, 3:] == 1).all()  # label = class index + 1
    # with overlap, the per-cell mean of distributions is still a distribution; NaN outside
    values = np.random.default_rng(2).normal(size=(9, 8))
    fs2 = feature_set(overlap.coords[:8], values[:8])
    probe2 = fit_probe(fs2, np.arange(8) % 2 == 0)
    heat2, seg2 = maps.probe_maps(fs2, probe2)
    covered = np.isfinite(heat2.data).all(axis=0)
    np.testing.assert_allclose(heat2.data.sum(axis=0)[covered], 1.0, atol=1e-6)
    assert np.isnan(heat2.data[:, 3, 3]).all() and seg2.data[3, 3] == 0
    assert (seg2.data[covered] == np.argmax(heat2.data[:, covered], axis=0) + 1).all()


def test_saved_probes(tmp_path) -> None:
    import joblib

    fs, left = two_halves()
    probe = fit_probe(fs, left)
    path = maps.save_probe(probe, tmp_path / "probe.npz")
    loaded = maps.load_probe(path)
    np.testing.assert_allclose(loaded.predict_proba(fs.features), probe.predict_proba(fs.features), atol=1e-6)
    joblib.dump(probe, tmp_path / "probe.joblib")  # a pickle: loaded only when trusted (test_safety)
    for p in (path, tmp_path / "probe.joblib"):
        heat, _ = maps.probe_maps(fs, p, trust_pickle=True)
        assert heat.classes == ["stroma", "tumour"]
        np.testing.assert_allclose(heat.data.sum(axis=0), 1.0, atol=1e-6)
    wide = feature_set(fs.coords, np.zeros((36, 32)), patch=100, stride=100)
    with pytest.raises(MapError, match="the probe expects 16 features per patch, the file has 32"):
        maps.probe_maps(wide, path)
    with pytest.raises(MapError, match="predict_proba"):
        maps.probe_maps(fs, object())
    with pytest.raises(maps.ProbeFileError, match="no such probe file"):
        maps.load_probe(tmp_path / "missing.npz")


def test_attention_from_coords_and_values(overlap) -> None:
    m = maps.attention_map(overlap, overlap.coords[::-1], np.arange(9.0)[::-1])  # any order
    np.testing.assert_allclose(m.data, OVERLAP_MEANS)
    with pytest.raises(MapError, match="3 coords but 2"):
        maps.attention_map(overlap, overlap.coords[:3], np.zeros(2))


def test_attention_file_values(tmp_path, overlap) -> None:
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["coords"] = overlap.coords
        f["attention"] = np.array([0.1, 0.3, 0.2, 0.05, 0.05, 0.1, 0.1, 0.05, 0.05])
        f["attention_logits"] = np.arange(9.0)
    coords, ranks = attention_values(tmp_path / "a.h5")
    # the four tied lowest share rank 2.5 of 9: (2.5 - 1) / 8; the highest is 1
    np.testing.assert_allclose(ranks, [0.625, 1.0, 0.875, 0.1875, 0.1875, 0.625, 0.625, 0.1875, 0.1875])
    _, logits = attention_values(tmp_path / "a.h5", "logits")
    np.testing.assert_array_equal(logits, np.arange(9.0))
    np.testing.assert_allclose(maps.attention_map(overlap, coords, logits).data, OVERLAP_MEANS)


def write_comparison(out: Path, coords, cosine, slide_mpp=0.499, size0=897.7955911823648):
    from napari_xmag.compare import FORMAT, ComparisonResult, write_comparison

    n = len(coords)
    report = {
        "format": FORMAT, "format_version": 1, "slide": str(CMU1.path), "slide_mpp": slide_mpp,
        "student": {"model": "xmag", "weights": {"random": True}, "mpp": 2.0, "patch_size": 224,
                    "patch_size_level0": size0},
        "teacher": {"model": "uni2-h", "weights": {"random": True}},
        "mapping": "ridge",
    }
    result = ComparisonResult(
        out_dir=out, report=report, coords=np.asarray(coords, np.int64),
        crop_coords=np.zeros((n, 16, 2), np.int64), tissue=np.ones(n, np.float32),
        student_features=np.zeros((n, 4), np.float32), teacher_features=np.zeros((n, 4), np.float32),
        teacher_crop_features=np.zeros((n, 16, 4), np.float32), cosine=np.asarray(cosine, np.float32),
        scored=np.isfinite(cosine), student_clusters=np.zeros(n, np.int32),
        teacher_clusters=np.zeros(n, np.int32),
    )
    write_comparison(result)
    return out


def test_cosine_from_a_comparison(tmp_path) -> None:
    coords = [[898, 0], [898, 898], [898, 1796], [898, 2694]]  # CMU-1's 5x tissue column
    out = write_comparison(tmp_path / "cmp", coords, [0.9, np.nan, 0.7, np.nan])
    m = cosine_map(out)
    assert m.data.shape == (4, 1)
    np.testing.assert_allclose(m.data[:, 0], [0.9, np.nan, 0.7, np.nan], rtol=1e-6)
    np.testing.assert_allclose(m.scale, (898 * 0.499, 898 * 0.499))
    np.testing.assert_allclose(m.translate, ((0 - 0.5 + 449) * 0.499, (898 - 0.5 + 449) * 0.499))
    assert m.metadata["slide_name"] == "CMU-1-Small-Region" and m.metadata["weights_random"] is True
    assert m.metadata["model"] == "xmag vs uni2-h"


# ---- the cache ------------------------------------------------------------------------------
def test_rerender_does_not_refit(tmp_path, monkeypatch) -> None:
    n = 24  # 576 patches of 32 dims, stride = patch / 2
    coords = grid_coords(np.arange(n) * 100, np.arange(n) * 100)
    path = write_features(tmp_path / "f.h5", feature_set(coords, dim=32))
    calls = {"kmeans": 0, "pca": 0}
    for kind in calls:
        def counted(*a, _fit=maps.kinds._FITTERS[kind], _kind=kind, **kw):
            calls[_kind] += 1
            return _fit(*a, **kw)

        monkeypatch.setitem(maps.kinds._FITTERS, kind, counted)
    maps.clear_cache()
    t0 = time.perf_counter()
    first = maps.kmeans_map(path, 8)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = maps.kmeans_map(path, 8)
    rerender_s = time.perf_counter() - t0
    assert calls["kmeans"] == 1 and maps.cache_info().misses == 1 and maps.cache_info().hits == 1
    np.testing.assert_array_equal(first.data, again.data)
    assert rerender_s < 0.5 and rerender_s < fit_s / 3, (fit_s, rerender_s)
    maps.pca_map(path)
    maps.pca_map(path)
    assert calls["pca"] == 1
    maps.kmeans_map(path, 4)  # other parameters: a new fit
    assert calls["kmeans"] == 2
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file is refitted
    maps.kmeans_map(path, 8)
    assert calls["kmeans"] == 3


# ---- real features on CMU-1, in napari ------------------------------------------------------
@pytest.fixture(scope="module")
def cmu1_features(tmp_path_factory) -> Path:
    """CMU-1 at 5x with a tiny random model, stride 112 (half a patch): 18 patches."""
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model

    model = create_model("xmag", weights="random", tiny=True)
    settings = EmbedSettings(stride=112, device="cpu", batch_size=16, workers=1)
    return embed_slide(CMU1.path, model, tmp_path_factory.mktemp("feat"), settings, progress=False).output


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
    for (x, y), r, c in zip(fs.coords, rows, cols, strict=True):
        # a patch's top-left corner is the top-left edge of level-0 pixel (x, y): data (y - .5, x - .5)
        top_left = slide.data_to_world((y - 0.5, x - 0.5))
        np.testing.assert_allclose(top_left, ((y - 0.5) * 0.499, (x - 0.5) * 0.499))
        np.testing.assert_allclose(layer.world_to_data(top_left), (r - 0.5, c - 0.5), atol=1e-9)
        # the cells it covers end span * step later; its own edge is 897.8 px: 0.2 px = 0.0005 cell short
        bottom_right = slide.data_to_world((y + 2 * 449 - 0.5, x + 2 * 449 - 0.5))
        np.testing.assert_allclose(layer.world_to_data(bottom_right), (r + 1.5, c + 1.5), atol=1e-9)
        real = slide.data_to_world((y + size0 - 0.5, x + size0 - 0.5))
        np.testing.assert_allclose(layer.world_to_data(real), (r + 1.5, c + 1.5), atol=1e-3)
        # napari picks the map value of cell (r, c) inside the patch's first cell
        inside = slide.data_to_world((y + 449 / 2, x + 449 / 2))
        assert layer.get_value(inside, world=True) == m.data[r, c] > 0


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
