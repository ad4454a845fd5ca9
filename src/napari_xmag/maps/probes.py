"""Linear probes on patch features: fitted, saved and loaded without pickle, and applied.

:class:`LinearProbe` is what the few-shot probe widget trains and what ``xmag maps --probe``
applies; :func:`fit_linear_probe` is the one recipe (standardised features, class-balanced
logistic regression) that the few-shot probe and the cross-validated MIL probe share.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._atomic import OutputKind, atomic_path
from .._paths import InputFileError, file_problem
from .grid import MapError

__all__ = [
    "MAX_PROBE_BYTES",
    "PICKLE_SUFFIXES",
    "PROBE_FORMAT",
    "PROBE_KIND",
    "PROBE_SUFFIXES",
    "LinearProbe",
    "ProbeFileError",
    "fit_linear_probe",
    "is_probe_file",
    "load_probe",
    "predict",
    "probe_classes",
    "save_probe",
]

PROBE_FORMAT = "napari-xmag-linear-probe"


class ProbeFileError(InputFileError):
    """A probe file that is missing, damaged or refused (a pickle, untrusted types)."""


class LinearProbe:
    """A saved linear classifier: ``softmax(((x - mean) / scale) @ coef.T + intercept)``.

    Binary probes (one row of ``coef``) use the logistic function, as scikit-learn does.
    """

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, classes: Sequence[Any],
                 mean: np.ndarray | None = None, scale: np.ndarray | None = None) -> None:
        self.coef = np.atleast_2d(np.asarray(coef, np.float64))
        self.intercept = np.atleast_1d(np.asarray(intercept, np.float64))
        self.classes_ = np.asarray(list(classes))
        d = self.coef.shape[1]
        self.mean = np.zeros(d) if mean is None else np.asarray(mean, np.float64)
        self.scale = np.ones(d) if scale is None else np.asarray(scale, np.float64)
        self.n_features_in_ = d

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept
        if z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def save_probe(
    probe: Any, path: str | os.PathLike[str], classes: Sequence[str] | None = None, *, overwrite: bool = False
) -> Path:
    """Save a fitted linear probe (LogisticRegression, optionally after a StandardScaler in a
    Pipeline, or a :class:`LinearProbe`) as a ``.npz`` that :func:`load_probe` reads without pickle.

    An existing file is replaced only when it is a probe of ours, or with ``overwrite``."""
    scaler, clf = None, probe
    steps = getattr(probe, "steps", None)
    if steps:
        clf = steps[-1][1]
        if len(steps) == 2 and hasattr(steps[0][1], "mean_"):
            scaler = steps[0][1]
        elif len(steps) != 1:
            raise MapError("only a linear classifier, alone or after a StandardScaler, can be saved as .npz")
    if isinstance(clf, LinearProbe):
        coef, intercept, mean, scale = clf.coef, clf.intercept, clf.mean, clf.scale
    elif hasattr(clf, "coef_") and hasattr(clf, "intercept_") and hasattr(clf, "classes_"):
        coef, intercept = clf.coef_, clf.intercept_
        d = np.atleast_2d(coef).shape[1]
        mean = scaler.mean_ if scaler is not None and scaler.mean_ is not None else np.zeros(d)
        scale = scaler.scale_ if scaler is not None and scaler.scale_ is not None else np.ones(d)
    else:
        raise MapError(f"{type(clf).__name__} is not a linear probe; save it with joblib (.joblib)")
    names = [str(c) for c in (classes if classes is not None else clf.classes_)]
    path = Path(path)
    # a file object: savez adds no .npz to the temporary's name
    with atomic_path(path, PROBE_KIND, overwrite=overwrite) as tmp, tmp.open("wb") as fh:
        np.savez(fh, format=PROBE_FORMAT, coef=coef, intercept=intercept, mean=mean, scale=scale,
                 classes=np.asarray(names))
    return path


def is_probe_file(path: Path) -> bool:
    """True for a probe ``.npz`` written by :func:`save_probe`; never raises."""
    try:
        if file_problem(path) is not None:
            return False
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files and str(z["format"]) == PROBE_FORMAT
    except Exception:
        return False


PROBE_KIND = OutputKind("probe file", is_probe_file)
#: Probe files: ours (no code in them), scikit-learn's skops format (types checked before
#: loading), and pickles, which run code when loaded and are read only when trusted.
PROBE_SUFFIXES = (".npz", ".skops")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
#: The largest probe file read: a linear probe of 1536-d features is a few hundred KB.
MAX_PROBE_BYTES = 256 << 20


def load_probe(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Any:
    """A probe from a file, loaded without running anything the file holds.

    * ``.npz``: our linear probe (:func:`save_probe`), read with ``allow_pickle=False``;
    * ``.skops``: a scikit-learn estimator saved with ``skops.io.dump``; loaded only when every
      type it names is one skops trusts (scikit-learn's estimators, numpy), else refused naming
      the untrusted types;
    * ``.joblib``/``.pkl``: pickles, which run code when loaded: refused unless ``trust_pickle``
      (``xmag maps --trust-pickle``; the probe widget's checkbox). Convert one you trust with
      ``skops.io.dump(joblib.load(f), "probe.skops")``.
    """
    path = Path(path)
    problem = file_problem(path, max_bytes=MAX_PROBE_BYTES)
    if problem:
        raise ProbeFileError(f"{path}: {'no such probe file' if problem == 'no such file' else problem}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != PROBE_FORMAT:
                    raise MapError(f"{path}: not a {PROBE_FORMAT} file")
                return LinearProbe(z["coef"], z["intercept"], [str(c) for c in z["classes"]],
                                   z["mean"], z["scale"])
        if suffix == ".skops":
            probe = _load_skops(path)
        elif suffix in PICKLE_SUFFIXES:
            if not trust_pickle:
                raise MapError(
                    f"{path}: refused: a {suffix} file is a pickle, and loading a pickle runs whatever code"
                    " it holds. Save probes with napari_xmag.maps.save_probe (.npz) or skops (.skops);"
                    " to load a pickle you made yourself, pass --trust-pickle (the probe widget: 'trust"
                    " pickle files')"
                )

            probe = joblib.load(path)
        else:
            raise MapError(f"{path}: a probe file is .npz (save_probe) or .skops (scikit-learn via skops)")
    except MapError:
        raise
    except (OSError, KeyError, ValueError, EOFError, ImportError, AttributeError, TypeError) as err:
        raise ProbeFileError(f"{path}: not a readable probe file ({err})") from None
    if not hasattr(probe, "predict_proba"):
        raise MapError(f"{path}: {type(probe).__name__} has no predict_proba")
    return probe


def _load_skops(path: Path) -> Any:
    """A skops file whose types skops trusts by default; its untrusted types are named otherwise."""
    import skops.io  # on demand: importing skops imports torch (its array-API types), ~2.5 s

    untrusted = skops.io.get_untrusted_types(file=path)
    if untrusted:
        shown = ", ".join(untrusted[:5]) + (f" and {len(untrusted) - 5} more" if len(untrusted) > 5 else "")
        raise MapError(f"{path}: refused: it names types skops does not trust ({shown}), which could run"
                       " code when loaded")
    return skops.io.load(path)


def _probe_width(probe: Any) -> int | None:
    n = getattr(probe, "n_features_in_", None)
    return int(n) if n is not None else None


def predict(probe: Any, features: np.ndarray, what: str) -> np.ndarray:
    if isinstance(probe, (str, os.PathLike)):
        probe = load_probe(probe)
    if not hasattr(probe, "predict_proba"):
        raise MapError(f"a probe needs predict_proba; {type(probe).__name__} has none")
    width, d = _probe_width(probe), features.shape[1]
    if width is not None and width != d:
        raise MapError(f"{what}: the probe expects {width} features per patch, the file has {d}")
    try:
        prob = np.asarray(probe.predict_proba(np.asarray(features)), np.float64)
    except ValueError as err:
        raise MapError(f"{what}: the probe cannot score {d}-dimensional features ({err})") from None
    if prob.ndim != 2 or len(prob) != len(features):
        raise MapError(f"{what}: predict_proba returned {prob.shape}, expected ({len(features)}, C)")
    return prob.astype(np.float32)


def probe_classes(probe: Any, n: int) -> list[str]:
    classes = getattr(probe, "classes_", None)
    if classes is None and hasattr(probe, "steps"):
        classes = getattr(probe.steps[-1][1], "classes_", None)
    names = [str(c) for c in classes] if classes is not None else []
    return names if len(names) == n else [f"class {i}" for i in range(n)]




def fit_linear_probe(
    features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, seed: int = 0, max_iter: int = 2000,
    class_names: Sequence[str] | None = None,
) -> LinearProbe:
    """The one probe recipe: features standardised (their mean and std), then a class-balanced
    logistic regression (so a class annotated more does not win by default).

    ``labels`` (N,) are any sortable values; the probe's classes are their distinct values in
    sorted order, named by ``class_names`` (one per distinct label) or by ``str(label)``.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise MapError("a probe needs at least two classes among its labels")
    pipe = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced", random_state=seed),
    ).fit(x, y)
    scaler, clf = pipe.steps[0][1], pipe.steps[-1][1]
    names = list(class_names) if class_names is not None else [str(k) for k in clf.classes_]
    if len(names) != len(clf.classes_):
        raise MapError(f"{len(names)} class names for {len(clf.classes_)} classes")
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return LinearProbe(clf.coef_, clf.intercept_, names, scaler.mean_, scale)
