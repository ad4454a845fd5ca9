"""The memory budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_sets import features_file
from napari_xmag.features import FeatureFileError, read_features


def test_budget_bounds_what_a_file_may_allocate(tmp_path: Path, monkeypatch) -> None:
    path = features_file(tmp_path / "case.h5", n=36, dim=64)
    monkeypatch.setenv("XMAG_MEMORY_BUDGET_MB", "0.01")
    with pytest.raises(FeatureFileError, match="more than the budget"):
        read_features(path)
