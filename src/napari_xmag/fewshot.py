"""Few-shot probe: a few painted regions or points -> a linear probe -> maps of the whole slide.

The library half of the *XMAG few-shot probe* widget; numpy and scikit-learn only (no napari,
Qt or torch), so scripts and tests use it directly.

Which patches an annotation selects (world µm, the slide layer made by our reader: level-0
pixel ``x`` is centred at ``x * mpp``, so a patch at level-0 ``x`` with ``size`` level-0 px
covers ``[(x - 0.5) * mpp, (x + size - 0.5) * mpp)``):

* **Painted labels** (class ids 1..C, 0 = unpainted): a patch is taken with class ``k`` when the
  labels pixel under the patch's **centre** is ``k``. One pixel per patch, so a patch never
  gets two classes; paint over the middle of the patches you mean.
* **Points** (each with a class id): a point selects every patch whose **footprint** holds it
  (up to 4 patches at half-patch stride). A patch that points of two different classes select
  is left out as ambiguous.

The probe is :func:`napari_xmag.maps.fit_linear_probe` (standardised features, a class-balanced
logistic regression: the one probe recipe of the package), a
:class:`napari_xmag.maps.LinearProbe` named ``class <id>`` per annotated class, saved and
reloaded without pickle (:func:`napari_xmag.maps.save_probe` / ``load_probe``). Its maps are
:func:`napari_xmag.maps.probe_maps`: one probability heatmap per class (summing to 1 in every
covered cell) and a segmentation whose label ``i`` is the ``i``-th annotated class in
increasing id order (label ``i`` = class ``i`` when the classes painted are 1..C).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .features import FeatureFileError, FeatureSet, read_features
from .maps import (
    LinearProbe,
    MapError,
    SlideMap,
    fit_linear_probe,
    grid_for_features,
    load_probe,
    probe_maps,
    save_probe,
)
from .slide import level0_to_um

__all__ = [
    "FewShotError",
    "FewShotResult",
    "Selection",
    "fewshot_probe",
    "load_features",
    "load_probe",
    "patches_under_labels",
    "patches_under_points",
    "predict_maps",
    "save_probe",
    "train_probe",
]

NO_FEATURES_HINT = "run the XMAG inference widget (or `xmag embed`) on the slide first"


class FewShotError(ValueError):
    """The annotations cannot train a probe (one class only, off the slide, no features file)."""


@dataclass(frozen=True)
class Selection:
    """The annotated patches: indices into the features file and their class ids (>= 1)."""

    index: np.ndarray  # (M,) int64
    classes: np.ndarray  # (M,) int64

    def __len__(self) -> int:
        return len(self.index)

    def counts(self) -> dict[int, int]:
        ids, n = np.unique(self.classes, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, n, strict=True)}


@dataclass(frozen=True)
class FewShotResult:
    """A trained probe, the patches it learned from, and its maps of the whole slide."""

    probe: LinearProbe
    selection: Selection
    heatmaps: SlideMap  # (C, H, W) class probabilities
    segmentation: SlideMap  # (H, W) labels 1..C, 0 = no patch
    training_accuracy: float

    @property
    def class_ids(self) -> list[int]:
        return sorted(self.selection.counts())

    def summary(self) -> str:
        counts = ", ".join(f"class {k}: {n}" for k, n in self.selection.counts().items())
        return (
            f"probe trained on {len(self.selection)} patches ({counts});"
            f" training accuracy {self.training_accuracy:.0%}"
        )


# ---- inputs ---------------------------------------------------------------------------------
def load_features(path: str | os.PathLike[str] | None) -> FeatureSet:
    """The features file, or a :class:`FewShotError` that says how to make it."""
    if path is None or str(path) == "":
        raise FewShotError(f"no features file chosen: {NO_FEATURES_HINT}")
    path = Path(path)
    if not path.exists():
        raise FewShotError(f"{path}: no features file yet: {NO_FEATURES_HINT}")
    try:
        return read_features(path)
    except FeatureFileError as err:
        raise FewShotError(str(err)) from None


def _geometry(
    data: FeatureSet, slide_mpp: float | None
) -> tuple[np.ndarray, float, float, tuple[float, float]]:
    """Patch origins (level-0 x, y), patch size (level-0 px), slide µm/px, slide extent (µm, y, x)."""
    try:
        grid = grid_for_features(data, slide_mpp)
    except MapError as err:
        raise FewShotError(str(err)) from None
    mpp = grid.slide_mpp
    w = data.coords_attrs.get("level0_width")
    h = data.coords_attrs.get("level0_height")
    if w and h:
        extent = (float(h) * mpp, float(w) * mpp)
    else:  # TRIDENT files: the patches' reach
        far = data.coords.max(axis=0) + grid.patch_x
        extent = (float(far[1]) * mpp, float(far[0]) * mpp)
    return np.asarray(data.coords, np.float64), float(grid.patch_x), mpp, extent


def _outside(points_yx: np.ndarray, extent: tuple[float, float], mpp: float) -> np.ndarray:
    lo = -0.5 * mpp
    return (
        (points_yx[:, 0] < lo) | (points_yx[:, 1] < lo)
        | (points_yx[:, 0] >= extent[0] + lo) | (points_yx[:, 1] >= extent[1] + lo)
    )


def patches_under_labels(
    data: FeatureSet,
    labels: np.ndarray,
    scale: Sequence[float],
    translate: Sequence[float],
    *,
    slide_mpp: float | None = None,
) -> Selection:
    """Patches whose centre lies on a painted pixel (> 0) of ``labels``.

    ``labels`` is (H, W) (or (..., H, W): the last two axes are used) drawn with napari
    ``scale``/``translate`` (µm, y then x) in the slide's frame: labels pixel ``(i, j)`` is
    centred at ``translate + (i, j) * scale``.
    """
    raster = np.asarray(labels)
    if raster.ndim > 2:
        raster = raster.reshape(-1, *raster.shape[-2:]).max(axis=0)
    if raster.ndim != 2:
        raise FewShotError(f"a labels annotation is a 2-D raster, got shape {raster.shape}")
    painted = raster > 0
    if not painted.any():
        raise FewShotError("the labels layer is empty: paint a few regions with class ids 1, 2, ...")
    coords, size, mpp, extent = _geometry(data, slide_mpp)
    sy, sx = (float(s) for s in scale[-2:])
    ty, tx = (float(t) for t in translate[-2:])
    # Painted pixels off the slide: refuse when none is on it.
    pi, pj = np.nonzero(painted)
    world = np.stack([ty + pi * sy, tx + pj * sx], axis=1)
    if _outside(world, extent, mpp).all():
        raise FewShotError(
            "the painted labels lie outside the slide: paint over the slide (is the labels layer"
            " drawn on another slide, or in pixels rather than µm?)"
        )
    centre_x, centre_y = level0_to_um(coords + size / 2, mpp).T
    i = np.rint((centre_y - ty) / sy).astype(np.int64)
    j = np.rint((centre_x - tx) / sx).astype(np.int64)
    inside = (i >= 0) & (j >= 0) & (i < raster.shape[0]) & (j < raster.shape[1])
    cls = np.zeros(len(coords), np.int64)
    cls[inside] = raster[i[inside], j[inside]]
    index = np.flatnonzero(cls > 0)
    return Selection(index.astype(np.int64), cls[index])


def patches_under_points(
    data: FeatureSet,
    points_yx: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    *,
    slide_mpp: float | None = None,
) -> Selection:
    """Patches whose footprint holds a point (world µm, y then x, in the slide's frame).

    A patch selected by points of two different classes is left out; class ids must be >= 1.
    """
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2) if len(points_yx) else np.zeros((0, 2))
    ids = np.asarray(classes).reshape(-1)
    if len(pts) == 0:
        raise FewShotError("the points layer is empty: drop a few points on each tissue type")
    if len(ids) != len(pts):
        raise FewShotError(f"{len(pts)} points but {len(ids)} class ids")
    try:
        ids = ids.astype(np.int64)
    except (TypeError, ValueError):
        raise FewShotError(f"point classes must be whole numbers 1, 2, ...; got {ids[:5].tolist()}") from None
    if (ids < 1).any():
        raise FewShotError("point classes are ids 1, 2, ... (0 means unlabelled)")
    coords, size, mpp, extent = _geometry(data, slide_mpp)
    off = _outside(pts, extent, mpp)
    if off.all():
        raise FewShotError(
            f"all {len(pts)} points lie outside the slide: drop them on the slide (are they in µm,"
            " on this slide?)"
        )
    x0, y0, x1, y1 = level0_to_um(np.concatenate([coords, coords + size], axis=1), mpp).T
    hit = (
        (pts[:, None, 1] >= x0) & (pts[:, None, 1] < x1) & (pts[:, None, 0] >= y0) & (pts[:, None, 0] < y1)
    )  # (P, N)
    lo = np.where(hit, ids[:, None], np.iinfo(np.int64).max).min(axis=0)
    hi = np.where(hit, ids[:, None], 0).max(axis=0)
    keep = (hi > 0) & (lo == hi)
    index = np.flatnonzero(keep)
    return Selection(index.astype(np.int64), hi[index])


# ---- the probe ------------------------------------------------------------------------------
def train_probe(features: np.ndarray, selection: Selection, *, c: float = 1.0, seed: int = 0) -> LinearProbe:
    """Standardised features -> balanced ``LogisticRegression``, as a :class:`LinearProbe`
    whose classes are named ``class <id>``."""
    counts = selection.counts()
    if len(selection) == 0:
        raise FewShotError(
            "no embedded patch lies under the annotations: annotate tissue (glass has no patches),"
            " or lower the tissue threshold and embed again"
        )
    if len(counts) < 2:
        only = next(iter(counts))
        raise FewShotError(
            f"only class {only} is annotated ({counts[only]} patches): a probe needs at least 2"
            " classes; annotate another tissue type with another class id"
        )
    x = np.asarray(features, np.float64)[selection.index]
    names = [f"class {k}" for k in sorted(counts)]
    return fit_linear_probe(x, selection.classes, c=c, seed=seed, class_names=names)


def predict_maps(
    source: str | os.PathLike[str] | FeatureSet, probe: Any, *, slide_mpp: float | None = None
) -> tuple[SlideMap, SlideMap]:
    """The probe's maps of the whole slide: (class heatmaps (C, H, W), segmentation (H, W))."""
    try:
        heat, seg = probe_maps(source, probe, slide_mpp=slide_mpp)
    except MapError as err:
        raise FewShotError(str(err)) from None
    return heat, seg


def fewshot_probe(
    features: str | os.PathLike[str] | FeatureSet,
    *,
    labels: tuple[np.ndarray, Sequence[float], Sequence[float]] | None = None,
    points: tuple[np.ndarray, Sequence[int]] | None = None,
    slide_mpp: float | None = None,
    c: float = 1.0,
) -> FewShotResult:
    """Train on the annotated patches and map the whole slide.

    ``labels``: ``(raster, scale, translate)``; ``points``: ``(points_yx_um, class_ids)``; both
    in world µm in the slide's frame. Give one or the other.
    """
    data = features if isinstance(features, FeatureSet) else load_features(features)
    if (labels is None) == (points is None):
        raise FewShotError("give the annotations as a labels layer or as points, one of the two")
    if labels is not None:
        selection = patches_under_labels(data, *labels, slide_mpp=slide_mpp)
    else:
        assert points is not None
        selection = patches_under_points(data, points[0], points[1], slide_mpp=slide_mpp)
    probe = train_probe(data.features, selection, c=c)
    prob = probe.predict_proba(data.features[selection.index])
    ids = np.array([int(name.split()[-1]) for name in probe.classes_])
    accuracy = float((ids[prob.argmax(axis=1)] == selection.classes).mean())
    # from the file when there is one: the maps then record it (features_path) for the writers
    source = data if isinstance(features, FeatureSet) else features
    heat, seg = predict_maps(source, probe, slide_mpp=slide_mpp)
    return FewShotResult(probe, selection, heat, seg, accuracy)
