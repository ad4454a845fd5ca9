"""Linear probes: heatmaps, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest

from feature_sets import feature_set, fit_probe, two_halves
from napari_xmag import maps
from napari_xmag.maps import MapError


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
