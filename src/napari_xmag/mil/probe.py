"""Linear probing: logistic regression on standardised patch features, cross-validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..maps import fit_linear_probe
from .data import MILError, stratified_folds
from .metrics import classification_metrics, summarise

__all__ = ["ProbeResult", "linear_probe"]


@dataclass
class ProbeResult:
    """Per-fold metrics, their mean ± std, and the metrics of all out-of-fold predictions."""

    folds: list[dict[str, float]]
    summary: dict[str, dict[str, float]]
    pooled: dict[str, float]
    classes: list[str]
    n_samples: int
    split: str  # "group" (no slide in both train and test) or "sample"
    probabilities: np.ndarray  # (n, K) out-of-fold

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "summary": self.summary,
            "pooled": self.pooled,
            "classes": self.classes,
            "n_samples": self.n_samples,
            "split": self.split,
        }


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    groups: np.ndarray | None = None,
    classes: list[str] | None = None,
    C: float = 1.0,
    max_iter: int = 2000,
) -> ProbeResult:
    """Stratified k-fold logistic regression of ``labels`` on ``features`` (N, D).

    ``labels`` are indices into ``classes`` when that is given, else any values, encoded
    in sorted order. With ``groups`` (e.g. the slide of each patch) the folds keep groups whole, so a
    probe cannot score by recognising a slide. Each fold's probe is
    :func:`napari_xmag.maps.fit_linear_probe`: features standardised with the training fold's
    mean and std, classes weighted inversely to their frequency, since pathology labels are
    rarely balanced (balanced accuracy is reported beside accuracy).
    """
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or len(x) != len(labels):
        raise MILError(f"features must be (N, D) with one label per row; got {x.shape} and {len(labels)}")
    if classes is None:
        values, y = np.unique(np.asarray(labels), return_inverse=True)
        classes = [str(v) for v in values]
    else:  # labels are indices into classes
        y = np.asarray(labels, np.int64)
    n_classes = len(classes)
    if len(np.unique(y)) < 2:
        raise MILError("one class only; a classifier needs at least two")
    splits = stratified_folds(y, folds, seed, groups, unit="patches" if groups is None else "slides")
    prob = np.zeros((len(y), n_classes))
    per_fold = []
    for train, test in splits:
        probe = fit_linear_probe(x[train], y[train], c=C, max_iter=max_iter)
        fold_prob = np.zeros((len(test), n_classes))
        # a class absent from a training fold (possible with groups) gets probability 0
        fold_prob[:, [int(k) for k in probe.classes_]] = probe.predict_proba(x[test])
        prob[test] = fold_prob
        per_fold.append(classification_metrics(y[test], fold_prob))
    return ProbeResult(
        folds=per_fold,
        summary=summarise(per_fold),
        pooled=classification_metrics(y, prob),
        classes=list(classes),
        n_samples=len(y),
        split="group" if groups is not None else "sample",
        probabilities=prob,
    )
