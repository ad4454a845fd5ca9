"""Feature files: TRIDENT layout, zarr twin, atomic writes, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_xmag.features import (
    FeatureFileError,
    FeatureSet,
    feature_path,
    read_features,
    settings_differ,
    write_features,
)


def make_set(n: int = 5, d: int = 8, tokens: bool = False) -> FeatureSet:
    rng = np.random.default_rng(0)
    return FeatureSet(
        coords=np.arange(2 * n, dtype=np.int64).reshape(n, 2) * 896,
        features=rng.standard_normal((n, d)).astype(np.float32),
        attrs={"model": "xmag", "weights_random": True, "mpp": 2.0, "mpp_override": None},
        coords_attrs={"patch_size": 224, "patch_size_level0": 896, "name": "slide"},
        tokens=rng.standard_normal((n, 2, 2, d)).astype(np.float32) if tokens else None,
    )


def test_h5_has_the_trident_layout(tmp_path) -> None:
    data = make_set()
    path = write_features(tmp_path / "slide.h5", data)
    with h5py.File(path) as f:
        assert set(f) == {"coords", "features"}
        assert f["coords"].shape == (5, 2) and f["coords"].dtype == np.int64
        assert f["features"].shape == (5, 8) and f["features"].dtype == np.float32
        assert f["coords"].attrs["patch_size_level0"] == 896
        assert f["features"].attrs["model"] == "xmag"
    back = read_features(path)
    np.testing.assert_array_equal(back.coords, data.coords)
    np.testing.assert_array_equal(back.features, data.features)
    assert back.attrs == {"model": "xmag", "weights_random": True, "mpp": 2.0, "mpp_override": ""}
    assert back.coords_attrs["name"] == "slide"


def test_zarr_twin_keeps_tokens(tmp_path) -> None:
    data = make_set(tokens=True)
    path = write_features(tmp_path / "slide.zarr", data)
    back = read_features(path)
    np.testing.assert_array_equal(back.features, data.features)
    np.testing.assert_array_equal(back.tokens, data.tokens)
    assert back.coords_attrs["patch_size"] == 224 and back.attrs["model"] == "xmag"
    write_features(path, make_set(n=3))  # replacing a complete store
    assert len(read_features(path)) == 3


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path) -> None:
    path = write_features(tmp_path / "slide.h5", make_set())
    bad = make_set()
    bad.features = bad.features[:2]  # mismatched rows
    with pytest.raises(ValueError, match="5 coords but 2 feature rows"):
        write_features(path, bad)
    bad = make_set()
    bad.features = object()  # type: ignore[assignment]  # fails inside the writer
    with pytest.raises(Exception):  # noqa: B017, PT011  # whatever h5py raises: the point is what is left
        write_features(path, bad)
    assert [p.name for p in tmp_path.iterdir()] == ["slide.h5"]
    assert len(read_features(path)) == 5


def test_reading_bad_files_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FeatureFileError, match="no such features file"):
        read_features(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError, match=r"junk\.h5: not a readable features file"):
        read_features(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(FeatureFileError, match="no 'coords' dataset"):
        read_features(tmp_path / "other.h5")


def test_feature_path_and_settings() -> None:
    assert str(feature_path("out", "/data/a b.svs")) == "out/a b.h5"
    assert str(feature_path("out", "x.ndpi", "zarr")) == "out/x.zarr"
    with pytest.raises(ValueError, match="csv"):
        feature_path("out", "x.svs", "csv")
    assert settings_differ({"mpp": 2.0, "model": "xmag"}, {"mpp": 2.0, "model": "xmag"}) == {}
    assert settings_differ({"mpp": 2.0}, {"mpp": 0.5}) == {"mpp": (2.0, 0.5)}
    assert settings_differ({"mpp_override": ""}, {"mpp_override": None}) == {}
