"""Classification metrics per fold, and their mean and standard deviation over folds."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

__all__ = ["METRICS", "classification_metrics", "format_summary", "summarise"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def classification_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUC of class probabilities ``prob`` (n, K).

    AUC is the ROC AUC of class 1 for two classes, else the one-vs-rest macro mean over the
    classes present in ``y_true`` (sklearn refuses a fold that lacks a class; we average
    over the classes it can score). It is NaN when ``y_true`` holds a single class.
    """
    y_true = np.asarray(y_true)
    prob = np.asarray(prob, np.float64)
    n_classes = prob.shape[1]
    pred = prob.argmax(axis=1)
    labels = np.arange(n_classes)
    present = np.unique(y_true)
    if len(present) < 2:
        auc = float("nan")
    elif n_classes == 2:
        auc = float(roc_auc_score(y_true, prob[:, 1]))
    else:
        auc = float(np.mean([roc_auc_score(y_true == c, prob[:, c]) for c in present]))
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        # sklearn warns when a predicted class is absent from y_true; the score is still right
        "balanced_accuracy": float(_quiet(balanced_accuracy_score, y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "auc": auc,
    }


def _quiet(fn, *args):  # type: ignore[no-untyped-def]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


def summarise(per_fold: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean": m, "std": s}}`` over folds (population std, NaN folds skipped)."""
    out = {}
    for name in METRICS:
        values = np.array([fold[name] for fold in per_fold], np.float64)
        finite = values[np.isfinite(values)]
        out[name] = {
            "mean": float(finite.mean()) if len(finite) else float("nan"),
            "std": float(finite.std()) if len(finite) else float("nan"),
        }
    return out


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """``accuracy 0.912 ± 0.031, balanced_accuracy ...`` on one line."""
    return ", ".join(f"{name} {v['mean']:.3f} ± {v['std']:.3f}" for name, v in summary.items())
