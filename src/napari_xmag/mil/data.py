"""Labels, feature bags and cross-validation folds for probes and MIL (no torch here).

Two CSV formats, told apart by their header:

* slide labels: ``slide,label`` (``slide_id`` is accepted for ``slide``, as CLAM and TRIDENT
  write it). One row per slide; the slide is a name or a path, matched to
  ``FEATURES/<stem>.h5`` (or ``.zarr``).
* patch labels: ``slide,x,y,label``. One row per labelled patch; ``x, y`` are the level-0
  origin of the patch as stored in the features file's ``coords``.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .._atomic import write_json
from .._paths import MAX_LIST_BYTES, file_problem
from ..features import FeatureFileError, FeatureSet, read_features
from ..slide_list import SLIDE_SUFFIXES

__all__ = [
    "LabelTable",
    "MILError",
    "feature_file",
    "load_bags",
    "read_labels",
    "slide_stem",
    "stratified_folds",
    "write_json",
]

# Suffixes stripped from a slide name to get the stem its features file is named after. Only
# these: TCGA names hold dots ("...-DX1.0C4B9D3C-..."), so Path.stem would cut a bare name short.
_STEM_SUFFIXES = (*SLIDE_SUFFIXES, ".h5", ".zarr")
_SLIDE_COLUMNS = ("slide", "slide_id")


class MILError(ValueError):
    """Labels or features that cannot make a probe or MIL run; the message names the file."""


def slide_stem(name: str) -> str:
    """``"dir/TCGA-X.svs"`` -> ``"TCGA-X"``; a bare name is kept whole."""
    base = Path(name.strip()).name
    for suffix in _STEM_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


@dataclass(frozen=True)
class LabelTable:
    """A labels CSV, read and checked.

    ``kind`` is ``"slide"`` (one row per slide) or ``"patch"`` (one row per labelled patch,
    with ``xy``). ``y`` holds class indices into ``classes``.
    """

    path: Path
    kind: str
    names: list[str]  # the slide column as written (a name or a path), one per row
    stems: list[str]  # feature-file stems, one per row
    y: np.ndarray  # (R,) int64 class index per row
    classes: list[str]
    xy: np.ndarray | None = None  # (R, 2) int64, patch labels only

    @property
    def slides(self) -> list[str]:
        """Distinct slide stems in file order."""
        return list(dict.fromkeys(self.stems))

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.y.tolist())
        return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}


def _sorted_classes(labels: list[str]) -> list[str]:
    """Distinct labels, numerically sorted when they all are numbers (so 2 < 10)."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def read_labels(path: str | os.PathLike[str]) -> LabelTable:
    """Read a slide-label or patch-label CSV (see the module docstring)."""
    path = Path(path)
    problem = file_problem(path, max_bytes=MAX_LIST_BYTES)
    if problem:
        raise MILError(f"{path}: no such labels file" if problem == "no such file" else f"{path}: {problem}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = {name.strip().lower(): name for name in (reader.fieldnames or [])}
        slide_col = next((header[c] for c in _SLIDE_COLUMNS if c in header), None)
        if slide_col is None or "label" not in header:
            raise MILError(
                f"{path}: needs a 'slide' and a 'label' column (patch labels also 'x' and 'y');"
                f" found {sorted(header) or 'no header'}"
            )
        patch = "x" in header and "y" in header
        rows = list(reader)
    names, labels, xy = [], [], []
    for line, row in enumerate(rows, start=2):
        name, label = (row.get(slide_col) or "").strip(), (row.get(header["label"]) or "").strip()
        if not name or not label:
            raise MILError(f"{path}:{line}: empty slide or label")
        names.append(name)
        labels.append(label)
        if patch:
            try:
                xy.append((int(float(row[header["x"]])), int(float(row[header["y"]]))))
            except (TypeError, ValueError):
                raise MILError(f"{path}:{line}: x and y must be level-0 pixel coordinates") from None
    if not names:
        raise MILError(f"{path}: no rows")
    stems = [slide_stem(n) for n in names]
    if not patch:
        repeated = [s for s, n in Counter(stems).items() if n > 1]
        if repeated:
            raise MILError(f"{path}: slide {repeated[0]!r} is listed {Counter(stems)[repeated[0]]} times")
    classes = _sorted_classes(labels)
    if len(classes) < 2:
        raise MILError(f"{path}: one class only ({classes[0]!r}); a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    return LabelTable(
        path=path,
        kind="patch" if patch else "slide",
        names=names,
        stems=stems,
        y=np.array([index[label] for label in labels], np.int64),
        classes=classes,
        xy=np.array(xy, np.int64).reshape(-1, 2) if patch else None,
    )


def feature_file(features_dir: str | os.PathLike[str], stem: str) -> Path | None:
    """``DIR/<stem>.h5``, else ``DIR/<stem>.zarr``, else None."""
    for suffix in (".h5", ".zarr"):
        candidate = Path(features_dir) / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_bags(table: LabelTable, features_dir: str | os.PathLike[str]) -> dict[str, FeatureSet]:
    """The features file of every slide in ``table``, by stem; all missing ones named at once."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise MILError(f"{features_dir}: no such features folder")
    paths = {stem: feature_file(features_dir, stem) for stem in table.slides}
    missing = [stem for stem, p in paths.items() if p is None]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MILError(
            f"{table.path}: {len(missing)} slide(s) without a features file in {features_dir}"
            f" (<slide>.h5 or .zarr): {shown}"
        )
    bags = {}
    for stem, p in paths.items():
        try:
            bags[stem] = read_features(p)  # type: ignore[arg-type]
        except FeatureFileError as err:
            raise MILError(str(err)) from None
        if len(bags[stem]) == 0:
            raise MILError(f"{p}: no patches")
    _check_same_embedding(bags, paths)  # type: ignore[arg-type]
    return bags


def _check_same_embedding(bags: dict[str, FeatureSet], paths: dict[str, Path]) -> None:
    """All bags must come from one model: a classifier cannot mix embedding spaces."""
    first = next(iter(bags))
    for stem, bag in bags.items():
        for what, a, b in (
            ("features are", bags[first].features.shape[1], bag.features.shape[1]),
            ("model is", bags[first].attrs.get("model"), bag.attrs.get("model")),
            ("weights are", bags[first].attrs.get("weights_sha256"), bag.attrs.get("weights_sha256")),
        ):
            if a is not None and b is not None and a != b:
                raise MILError(f"{paths[stem]}: its {what} {b!r}, {paths[first]}'s {a!r}; embed all"
                               " slides with one model")


def stratified_folds(
    y: np.ndarray,
    folds: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
    unit: str = "slides",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, test) index pairs, shuffled with ``seed``.

    With ``groups``, no group is split between train and test (StratifiedGroupKFold): the
    patches of one slide are all in the same fold. Too few samples for ``folds`` is a
    :class:`MILError` rather than scikit-learn's warning and folds without a class.
    """
    y = np.asarray(y)
    if folds < 2:
        raise MILError(f"cross-validation needs at least 2 folds, not {folds}")
    if groups is None:
        counts = Counter(y.tolist())
        if len(y) < folds:
            raise MILError(f"{len(y)} {unit} are fewer than the {folds} folds; lower --folds")
        smallest, n = min(counts.items(), key=lambda kv: kv[1])
        if n < folds:
            raise MILError(
                f"class {smallest} has {n} {unit}, fewer than the {folds} folds, so some folds would"
                " not test it; lower --folds or add data"
            )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise MILError(f"{n_groups} slides are fewer than the {folds} folds; lower --folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))
