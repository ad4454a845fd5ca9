"""Feature sets with known geometry (hand-computable maps), and small features files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_xmag import maps
from napari_xmag.features import FeatureSet, write_features


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



# ---- kinds ----------------------------------------------------------------------------------
def two_halves(n=6, dim=16, noise=0.05):
    """N x n patches without overlap; the left half's features differ from the right half's."""
    coords = grid_coords(np.arange(n) * 200, np.arange(n) * 200)  # 100 px at 1 µm/px, 0.5 µm/px scan
    rng = np.random.default_rng(1)
    left = coords[:, 0] < n * 100
    centres = np.where(left[:, None], 1.0, -1.0) * np.ones(dim)
    features = centres + noise * rng.normal(size=(len(coords), dim))
    return feature_set(coords, features, patch=100, stride=100), left



def fit_probe(fs, left):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.where(left, "tumour", "stroma")
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(fs.features, y)



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



def ome_nodes(path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path), fmt=FormatV04()))())



# ---- napari round trips ---------------------------------------------------------------------
def add(viewer, m):
    from napari.layers import Layer

    return viewer.add_layer(Layer.create(*m.layer_data()))



def features_file(path: Path, n: int = 36, dim: int = 16) -> Path:
    """A small features file of ours on a 6 x 6 grid of 896 px patches (5x on a 0.5 µm/px slide)."""
    xs = np.arange(6) * 896
    coords = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)[:n]
    feats = np.random.default_rng(0).normal(size=(len(coords), dim)).astype(np.float32)
    attrs = {"slide_mpp": 0.5, "slide_path": "/slides/case.svs", "model": "xmag", "weights_random": True,
             "mpp": 2.0, "stride": 224, "xmag_version": "test"}
    coords_attrs = {"patch_size": 224, "patch_size_level0": 896, "patch_size_level0_exact": 896.0,
                    "stride": 224, "mpp": 2.0, "name": "case"}
    return write_features(path, FeatureSet(coords, feats, attrs, coords_attrs))

