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
* **Shapes** (polygons or rectangles, each with a class: an id or a name, e.g. a QuPath
  annotation's classification): a patch is taken when its **centre** lies inside a shape of
  one class only. Named classes keep their names in the probe (``Tumor``, ``Stroma``).

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
    "patches_under_shapes",
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
    names: tuple[tuple[int, str], ...] = ()  # class id -> name, for annotations that name them

    def name(self, class_id: int) -> str:
        return dict(self.names).get(class_id, f"class {class_id}")

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
        counts = ", ".join(f"{self.selection.name(k)}: {n}" for k, n in self.selection.counts().items())
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


def patches_under_shapes(
    data: FeatureSet,
    polygons_yx: Sequence[np.ndarray],
    classes: Sequence[int | str],
    *,
    slide_mpp: float | None = None,
) -> Selection:
    """Patches whose centre lies inside a shape (world µm, rows of y, x, in the slide's frame).

    ``classes``: one per shape, an id (>= 1) or a name; names become ids 1, 2, ... in order of
    first appearance and keep their names. A patch inside shapes of two classes is left out.
    """
    import shapely  # the geometry of the GeoJSON exports too

    if len(polygons_yx) == 0:
        raise FewShotError("the shapes layer is empty: draw a few regions on each tissue type")
    if len(classes) != len(polygons_yx):
        raise FewShotError(f"{len(polygons_yx)} shapes but {len(classes)} classes")
    names: dict[str, int] = {}
    ids = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if c < 1:
                raise FewShotError("shape classes are ids 1, 2, ... or names (0 means unlabelled)")
            ids.append(int(c))
        else:
            ids.append(names.setdefault(str(c), len(names) + 1))
    if names and len(names) != len(set(ids)):
        raise FewShotError("give the shapes' classes as names or as ids, not both")
    coords, size, mpp, extent = _geometry(data, slide_mpp)
    centres = level0_to_um(coords + size / 2, mpp)  # (N, 2) x, y
    cls = np.zeros(len(coords), np.int64)
    clash = np.zeros(len(coords), bool)
    on_slide = False
    for poly, k in zip(polygons_yx, ids, strict=True):
        ring = np.asarray(poly, np.float64).reshape(-1, 2)
        if len(ring) < 3:
            continue
        on_slide = on_slide or not _outside(ring, extent, mpp).all()
        shape = shapely.Polygon(ring[:, ::-1]).buffer(0)  # x, y; buffer(0) mends self-crossings
        inside = shapely.contains_xy(shape, centres[:, 0], centres[:, 1])
        clash |= inside & (cls > 0) & (cls != k)
        cls[inside & (cls == 0)] = k
    if not on_slide:
        raise FewShotError("the shapes lie outside the slide: draw them over the slide (is the layer"
                           " on another slide, or in pixels rather than µm?)")
    cls[clash] = 0
    index = np.flatnonzero(cls > 0)
    return Selection(index.astype(np.int64), cls[index], tuple((i, n) for n, i in names.items()))


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
    names = [selection.name(k) for k in sorted(counts)]
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
    shapes: tuple[Sequence[np.ndarray], Sequence[int | str]] | None = None,
    slide_mpp: float | None = None,
    c: float = 1.0,
) -> FewShotResult:
    """Train on the annotated patches and map the whole slide.

    ``labels``: ``(raster, scale, translate)``; ``points``: ``(points_yx_um, class_ids)``;
    ``shapes``: ``(polygons_yx_um, classes)`` (ids or names, e.g. QuPath's); all in world µm in
    the slide's frame. Give one of the three.
    """
    data = features if isinstance(features, FeatureSet) else load_features(features)
    if sum(a is not None for a in (labels, points, shapes)) != 1:
        raise FewShotError("give the annotations as a labels layer, points or shapes: one of the three")
    if labels is not None:
        selection = patches_under_labels(data, *labels, slide_mpp=slide_mpp)
    elif points is not None:
        selection = patches_under_points(data, points[0], points[1], slide_mpp=slide_mpp)
    else:
        assert shapes is not None
        selection = patches_under_shapes(data, shapes[0], shapes[1], slide_mpp=slide_mpp)
    probe = train_probe(data.features, selection, c=c)
    prob = probe.predict_proba(data.features[selection.index])
    ids = np.array(sorted(selection.counts()))  # the probe's classes, in increasing id order
    accuracy = float((ids[prob.argmax(axis=1)] == selection.classes).mean())
    # from the file when there is one: the maps then record it (features_path) for the writers
    source = data if isinstance(features, FeatureSet) else features
    heat, seg = predict_maps(source, probe, slide_mpp=slide_mpp)
    return FewShotResult(probe, selection, heat, seg, accuracy)
