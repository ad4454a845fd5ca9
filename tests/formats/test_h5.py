"""HDF5 inputs: external and virtual datasets refused, declared sizes bounded."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from feature_sets import features_file
from hazards import one_line_refusal, run_cli
from napari_xmag.features import FeatureFileError, read_features


# ---- HDF5 datasets that point at other files -----------------------------------------------
def _external_features(path: Path, secret: Path) -> Path:
    n, dim = 4, secret.stat().st_size // 16
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.array([[0, 0], [896, 0], [0, 896], [896, 896]], np.int64))
        f.create_dataset("features", shape=(n, dim), dtype="f4", external=[(str(secret), 0, n * dim * 4)])
        f["features"].attrs["slide_mpp"] = 0.5
        f["coords"].attrs.update({"patch_size_level0": 896, "mpp": 2.0, "patch_size": 224, "stride": 224})
    return path


def test_external_and_virtual_datasets_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_bytes(os.urandom(256))
    evil = _external_features(tmp_path / "evil.h5", secret)
    with pytest.raises(FeatureFileError, match="keeps its data in another file"):
        read_features(evil)
    proc = run_cli("maps", str(evil), "--kind", "pca", "--out", str(tmp_path / "m.ome.zarr"))
    one_line_refusal(proc, str(evil), "keeps its data in another file")
    # the napari features writer would have copied the secret into a normal file
    from napari_xmag._writer import write_layer_features

    with pytest.raises(FeatureFileError, match="keeps its data in another file"):
        write_layer_features(tmp_path / "copy.h5", {"metadata": {"xmag_map": {"features_path": str(evil)}}})
    assert not (tmp_path / "copy.h5").exists()

    source = features_file(tmp_path / "real.h5")
    virtual = tmp_path / "virtual.h5"
    with h5py.File(source, "r") as f:
        shape = f["features"].shape
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "features", shape=shape)
    with h5py.File(virtual, "w") as f:
        f.create_dataset("coords", data=read_features(source).coords)
        f.create_virtual_dataset("features", layout)
    with pytest.raises(FeatureFileError, match="is a virtual dataset"):
        read_features(virtual)


# ---- sizes are checked before anything is allocated ---------------------------------------
def test_a_tiny_h5_declaring_gigabytes_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.h5"
    with h5py.File(bomb, "w") as f:
        f.create_dataset("coords", shape=(625000, 2), dtype="i8", chunks=(1024, 2))
        f.create_dataset("features", shape=(625000, 1000), dtype="f4", chunks=(1024, 1000))
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(FeatureFileError, match=r"declares \(625000, 2\) int64 .* holds only"):
        read_features(bomb)
    proc = run_cli("maps", str(bomb), "--kind", "pca", "--out", str(tmp_path / "m.ome.zarr"))
    one_line_refusal(proc, str(bomb), "holds only")
    gz = tmp_path / "gzip-bomb.h5"  # compressed zeros: stored small, declared huge
    with h5py.File(gz, "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        f.create_dataset("features", data=np.zeros((4, 4), np.float32))
        f.create_dataset("tokens", shape=(4, 4000, 1000), dtype="f4", compression="gzip",
                         chunks=(1, 4000, 1000))
        for i in range(4):
            f["tokens"][i] = np.zeros((4000, 1000), np.float32)
    with pytest.raises(FeatureFileError, match="tokens"):
        read_features(gz)
