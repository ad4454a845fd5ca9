"""Fixtures shared across folders: real tissue from the test slides (see cases.py), pyramids built
from it, maps with known values, the sample slide embedded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cases import CMU1
from feature_sets import PATTERN, feature_set, grid_coords, pattern_features
from napari_xmag import maps
from napari_xmag.features import read_features
from napari_xmag.synthetic import tissue_regions
from two_tissues import HEIGHT, MPP, PATCH, STROMA, TUMOUR, WIDTH


@pytest.fixture(scope="session")
def cmu1_rgb() -> np.ndarray:
    import openslide

    with openslide.OpenSlide(CMU1.path) as osr:
        return np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))


@pytest.fixture(scope="session")
def pyramid_path(tmp_path_factory: pytest.TempPathFactory, cmu1_rgb: np.ndarray) -> Path:
    """A 3-level Aperio pyramid (downsamples 1, 4, 16; 240 px JPEG tiles) of real tissue."""
    from napari_xmag.synthetic import mirrored_source, write_aperio_pyramid

    path = tmp_path_factory.mktemp("pyramid") / "cmu1-pyramid.svs"
    return write_aperio_pyramid(path, 3200, 2400, mirrored_source(cmu1_rgb), mpp=0.5, app_mag=20)


@pytest.fixture(autouse=True)
def _no_replace_dialogs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test never waits on a "replace it?" dialog: the user says no unless a test says yes."""
    from napari_xmag._widgets import _common

    monkeypatch.setattr(_common, "confirm_replace", lambda path, reason: False)


@pytest.fixture
def xmag_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user cache, so tests never touch the real one."""
    monkeypatch.setenv("XMAG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- maps shared by the map, reader and writer tests --------------------------------------
@pytest.fixture(scope="module")
def label_map() -> maps.SlideMap:
    m = maps.kmeans_map(pattern_features(), 4)
    # k-means recovers the pattern up to the names of the clusters
    pairs = set(zip(PATTERN.ravel().tolist(), m.data.ravel().tolist(), strict=True))
    assert len(pairs) == 4
    return m


@pytest.fixture(scope="module")
def heat_map() -> maps.SlideMap:
    """70 x 90 cells of value 1000 r + c, NaN on a diagonal band (not scored)."""
    coords = grid_coords(np.arange(90) * 200, np.arange(70) * 200)
    fs = feature_set(coords, np.zeros((len(coords), 2)), patch=100, stride=100)
    r, c = coords[:, 1] // 200, coords[:, 0] // 200
    values = np.where(np.abs(r - c) < 3, np.nan, 1000.0 * r + c)
    return maps.attention_map(fs, coords, values)


# ---- the sample slide's two tissues, embedded: the few-shot library and its widget ----------
@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The procedural sample slide embedded at 20x, stride 112, by a tiny random model whose
    features vary with the input (layer-scale gammas at 1, not DINOv2's 1e-5)."""
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model
    from napari_xmag.synthetic import write_sample_slide

    folder = tmp_path_factory.mktemp("probe")
    slide = write_sample_slide(folder / "sample.svs", WIDTH, HEIGHT)
    model = create_model("xmag", weights="random", tiny=True, overrides={"init_values": 1.0})
    settings = EmbedSettings(mpp=MPP, patch_size=PATCH, stride=112, device="cpu", batch_size=32, workers=2)
    out = embed_slide(slide, model, folder / "features", settings, progress=False).output
    data = read_features(out)
    tissue, tumour = tissue_regions(WIDTH, HEIGHT)
    frac_tumour = np.array([tumour[y:y + PATCH, x:x + PATCH].mean() for x, y in data.coords])
    frac_tissue = np.array([tissue[y:y + PATCH, x:x + PATCH].mean() for x, y in data.coords])
    truth = np.zeros(len(data), np.int64)  # 0: mixed, not scored
    truth[frac_tumour > 0.6] = TUMOUR
    truth[(frac_tumour < 0.05) & (frac_tissue > 0.5)] = STROMA
    return slide, out, data, truth
