"""Slide-level metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xmag.mil import (
    classification_metrics,
    summarise,
)


# ---- metrics and labels -----------------------------------------------------------------------
def test_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, prob)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.75
    assert m["auc"] == 1.0  # every positive scores above every negative
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # three classes: one-vs-rest macro AUC; a fold holding one class has no AUC
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])
    from sklearn.metrics import roc_auc_score

    assert classification_metrics(y3, p3)["auc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert np.isnan(classification_metrics(np.array([1, 1]), prob[:2])["auc"])
    summary = summarise([{"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "auc": 0.4},
                         {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0, "auc": float("nan")}])
    assert summary["accuracy"] == {"mean": 0.75, "std": 0.25}
    assert summary["auc"] == {"mean": 0.4, "std": 0.0}  # NaN folds are skipped
