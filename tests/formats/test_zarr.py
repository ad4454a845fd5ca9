"""Zarr inputs: links refused, enlarged shapes refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feature_sets import features_file
from napari_xmag import maps
from napari_xmag.features import FeatureFileError, read_features, write_features


def test_zarr_stores_holding_links_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_bytes(os.urandom(64))
    store = tmp_path / "case.zarr"
    data = read_features(features_file(tmp_path / "case.h5"))
    write_features(store, data)
    chunk = next(p for p in (store / "features").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    chunk.symlink_to(secret)
    with pytest.raises(FeatureFileError, match="holds a link"):
        read_features(store)


def test_an_ome_zarr_with_an_enlarged_shape_is_refused(tmp_path: Path) -> None:
    from napari_xmag.maps import read_ome_zarr, write_ome_zarr

    m = maps.pca_map(read_features(features_file(tmp_path / "case.h5")))
    store = write_ome_zarr(tmp_path / "m.ome.zarr", m)
    meta = json.loads((store / "0" / ".zarray").read_text())
    meta["shape"] = [3, 200000, 200000]
    (store / "0" / ".zarray").write_text(json.dumps(meta))
    with pytest.raises(maps.MapFileError, match="more than a map of any slide holds"):
        read_ome_zarr(store)
    meta["shape"] = [3, 600, 600]  # under the cap, but not what its grid says
    (store / "0" / ".zarray").write_text(json.dumps(meta))
    with pytest.raises(maps.MapFileError, match="but its grid is"):
        read_ome_zarr(store)
