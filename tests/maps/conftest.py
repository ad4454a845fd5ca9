"""Fixtures of the map tests: overlapping patches, and CMU-1 embedded by a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from cases import CMU1
from feature_sets import XS, YS, feature_set, grid_coords


@pytest.fixture
def overlap():
    return feature_set(grid_coords(XS, YS))


# ---- real features on CMU-1, in napari ------------------------------------------------------
@pytest.fixture(scope="module")
def cmu1_features(tmp_path_factory) -> Path:
    """CMU-1 at 5x with a tiny random model, stride 112 (half a patch): 18 patches."""
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model

    model = create_model("xmag", weights="random", tiny=True)
    settings = EmbedSettings(stride=112, device="cpu", batch_size=16, workers=1)
    return embed_slide(CMU1.path, model, tmp_path_factory.mktemp("feat"), settings, progress=False).output
