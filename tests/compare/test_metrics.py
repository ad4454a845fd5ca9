"""Comparison metrics: ridge maps, spatial splits, linear CKA, ARI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xmag.compare import (
    adjusted_rand,
    cosine_rows,
    linear_cka,
    ridge_map,
    spatial_split,
)
from napari_xmag.maps import kmeans_labels

# CMU-1 at 0.499 µm/px: a 5x patch is 224 * 2.0 / 0.499 = 897.8 level-0 px and the grid steps
# round(224 * 4.008) = 898 px on level 0; a 20x crop is 224.45 px, rounded to 0, 224, 449, 673.
STEP = 898


# ---- the cosine: ridge and head ------------------------------------------------------------
def test_ridge_fits_one_split_and_scores_the_other(whole) -> None:
    result, _ = whole
    s, t = result.student_features, result.teacher_features
    held, block = spatial_split(result.coords, STEP)
    assert block == 2 and held.tolist() == [False, False, True, True]
    assert result.report["mapping"] == "ridge"
    assert result.scored.tolist() == held.tolist()
    assert np.isnan(result.cosine[~held]).all()
    # Refit on the training rows only: the held-out teacher rows must not matter.
    noisy = t.copy()
    noisy[held] = np.random.default_rng(0).normal(size=noisy[held].shape)
    predicted, alpha = ridge_map(s, noisy, ~held)
    np.testing.assert_allclose(result.cosine[held], cosine_rows(predicted, t)[held], rtol=1e-5)
    ridge = result.report["ridge"]
    assert (ridge["train"], ridge["held_out"], ridge["alpha"], ridge["alpha_by"]) == (2, 2, alpha, "fixed")
    assert result.report["cosine"]["scored"] == 2


def test_ridge_map_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(20), np.arange(10)), -1).reshape(-1, 2) * 100
    student = rng.normal(size=(200, 16))
    teacher = student @ rng.normal(size=(16, 24)) + 0.01 * rng.normal(size=(200, 24))
    held, block = spatial_split(coords, 100)
    assert block == 4 and 0.4 < held.mean() < 0.6
    predicted, alpha = ridge_map(student, teacher, ~held)
    assert cosine_rows(predicted, teacher)[held].min() > 0.99
    assert alpha in np.logspace(-1, 5, 7)


def test_spatial_split() -> None:
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2) * 10
    held, block = spatial_split(coords, 10)
    assert block == 4 and held.sum() == 32
    cells = held.reshape(8, 8)  # [row, col]
    assert not cells[:4, :4].any() and cells[:4, 4:].all() and cells[4:, :4].all() and not cells[4:, 4:].any()
    with pytest.raises(ValueError, match="at least two patches"):
        spatial_split(coords[:1], 10)


# ---- CKA and ARI ---------------------------------------------------------------------------
def _cka_by_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from centred Gram matrices, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, m = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * m).sum() / np.sqrt((k * k).sum() * (m * m).sum()))


def test_linear_cka_properties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0)
    y = x @ rng.normal(size=(20, 30)) + rng.normal(size=(300, 30))
    assert linear_cka(x, y) == pytest.approx(_cka_by_hsic(x, y))
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    assert linear_cka(x, x * np.linspace(1, 10, 20)) < 0.99  # not invariant to anisotropic scaling
    independent = linear_cka(rng.normal(size=(5000, 10)), rng.normal(size=(5000, 12)))
    assert 0 <= independent < 0.02
    assert np.isnan(linear_cka(np.ones((5, 3)), x[:5]))


def test_ari_and_kmeans() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand(labels, labels) == 1.0
    assert adjusted_rand(labels, (labels + 1) % 3) == 1.0  # names do not matter
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.1, size=(20, 4)) for c in (0, 5, 10)])
    a, b = kmeans_labels(blobs, 3, seed=0), kmeans_labels(blobs, 3, seed=0)
    assert (a == b).all() and adjusted_rand(a, np.repeat([0, 1, 2], 20)) == 1.0
