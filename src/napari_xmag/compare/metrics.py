"""Comparing two feature sets over the same patches: cosine, linear CKA, ARI, the ridge map.

numpy and scikit-learn only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "RIDGE_ALPHAS",
    "RIDGE_FIXED_ALPHA",
    "RIDGE_MIN_CV",
    "SPLIT_BLOCK",
    "adjusted_rand",
    "cosine_rows",
    "finite",
    "linear_cka",
    "ridge_map",
    "spatial_split",
    "stats",
]

#: Ridge penalties tried by leave-one-out CV (on standardised student features).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 7))
#: With fewer training patches than this, LOO CV is meaningless: a fixed alpha is used.
RIDGE_MIN_CV = 3
RIDGE_FIXED_ALPHA = 1.0
#: Side, in 5x patches, of the checkerboard squares that split train from held-out patches.
SPLIT_BLOCK = 4
# ---- metrics --------------------------------------------------------------------------------
def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two feature sets over the same N rows.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``.
    1 for the same features, invariant to orthogonal transforms and isotropic scaling of
    either side; NaN when one side has no variance (fewer than two distinct rows).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"CKA needs two (N, D) arrays over the same rows, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``, (N,) float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(1) / denom, np.nan)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings: 1 for the same partition, ~0 for unrelated ones."""
    return float(adjusted_rand_score(a, b))


# ---- the ridge map ---------------------------------------------------------------------------
def spatial_split(coords: np.ndarray, step: float, block: int = SPLIT_BLOCK) -> tuple[np.ndarray, int]:
    """Held-out mask (N,) bool and the block size used: a checkerboard of ``block`` x ``block``
    patch squares, so neighbouring (correlated) patches mostly fall on the same side.

    The block is halved until both sides have patches; a single patch cannot be split.
    """
    cells = np.rint(np.asarray(coords, np.float64) / step).astype(np.int64)
    while block >= 1:
        held = ((cells // block).sum(axis=1) % 2).astype(bool)
        if held.any() and not held.all():
            return held, block
        block //= 2
    raise ValueError(
        f"a ridge map needs at least two patches to fit on one and score the other, got {len(coords)};"
        " enlarge the ROI or use a student with a distillation head"
    )


def ridge_map(
    student: np.ndarray, teacher: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, float]:
    """Fit student -> teacher on the ``train`` rows; return predictions for all rows and alpha.

    Student features are standardised (on the training rows) so one alpha grid suits every
    model; alpha is picked by leave-one-out CV over :data:`RIDGE_ALPHAS`, or fixed at
    :data:`RIDGE_FIXED_ALPHA` with fewer than :data:`RIDGE_MIN_CV` training rows.
    """
    train = np.asarray(train, bool)
    if int(train.sum()) >= RIDGE_MIN_CV:
        reg: Any = RidgeCV(alphas=RIDGE_ALPHAS)
    else:
        reg = Ridge(alpha=RIDGE_FIXED_ALPHA)
    pipe = make_pipeline(StandardScaler(), reg)
    pipe.fit(np.asarray(student[train], np.float64), np.asarray(teacher[train], np.float64))
    alpha = float(getattr(reg, "alpha_", RIDGE_FIXED_ALPHA))
    return pipe.predict(np.asarray(student, np.float64)), alpha


def finite(value: float) -> float | None:
    """JSON has no NaN: undefined values are null."""
    return float(value) if math.isfinite(value) else None


def stats(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"scored": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "scored": len(values),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


