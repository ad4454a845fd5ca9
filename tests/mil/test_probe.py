"""The mean-pooled linear probe learns a direction, not noise."""

from __future__ import annotations

import numpy as np

from napari_xmag.mil import (
    linear_probe,
)


# ---- the probe ---------------------------------------------------------------------------------
def test_probe_learns_a_direction_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(32)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, 600)
    x = rng.standard_normal((600, 32)) + 1.5 * np.outer(2 * y - 1, direction)
    signal = linear_probe(x, y, folds=5, seed=0)
    assert signal.summary["balanced_accuracy"]["mean"] >= 0.85
    assert signal.summary["auc"]["mean"] >= 0.9
    assert len(signal.folds) == 5 and signal.split == "sample"
    again = linear_probe(x, y, folds=5, seed=0)
    assert again.folds == signal.folds  # fixed seed, same folds, same numbers
    noise = linear_probe(x, rng.permutation(y), folds=5, seed=0)
    assert abs(noise.summary["balanced_accuracy"]["mean"] - 0.5) <= 0.1
    assert abs(noise.summary["auc"]["mean"] - 0.5) <= 0.1
