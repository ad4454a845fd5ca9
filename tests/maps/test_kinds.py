"""The map kinds: PCA, k-means, attention, cosine, re-rendering from the cache."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from comparisons import write_comparison
from feature_sets import OVERLAP_MEANS, feature_set, grid_coords, two_halves
from napari_xmag import maps
from napari_xmag.compare import cosine_map
from napari_xmag.features import write_features
from napari_xmag.formats.attention import attention_values
from napari_xmag.maps import MapError


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
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file is refitted
    maps.kmeans_map(path, 8)
    assert calls["kmeans"] == 3
