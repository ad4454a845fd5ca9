"""Where map cells lie on a slide: the grid of a features file's patches, and rasters on it.

One map cell per grid step. A features file's patches sit on a regular grid of level-0
origins ``step`` px apart (``step = stride * mpp / slide_mpp``, read exactly from the coords);
map cell ``(r, c)`` covers level-0 x in ``[x0 + c * step_x, x0 + (c + 1) * step_x)`` and y
likewise, where ``(x0, y0)`` is the top-left corner of the top-left patch. A patch covers the
cells whose centres lie inside its footprint, so with ``stride = patch / 2`` every patch covers
2 x 2 cells and every inner cell is covered by 4 patches.

* :func:`rasterize_mean`: each cell holds the **mean** of the finite values of the patches that
  cover it (NaN where none). Averaging, not blurring: a cell is never influenced by a patch
  that does not cover it.
* :func:`rasterize_labels`: the **majority** label of the covering patches; a tie goes to the
  label of the patch whose centre is nearest the cell's centre, then to the smaller label;
  0 is background (no patch).

In napari world coordinates (µm; :func:`napari_xmag.slide.level0_to_world`), a map has
``scale = step * mpp`` and ``translate = (x0 - 0.5) * mpp + 0.5 * step * mpp`` per axis, so each
cell covers exactly the level-0 pixels it stands for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._values import positive_float
from ..features import FeatureHeader, FeatureSet
from ..slide import level0_to_um, um_to_level0

__all__ = [
    "GRID_TOLERANCE",
    "STEP_TOLERANCE",
    "MapError",
    "MapGrid",
    "build_grid",
    "grid_for_features",
    "rasterize_labels",
    "rasterize_mean",
]

#: How far (in grid steps) an origin may sit from the grid before the coords are refused.
GRID_TOLERANCE = 0.25
#: How far the step read from the coords may be from the nominal one (origins are rounded to
#: the pixels of the level read, so a few percent on coarse levels).
STEP_TOLERANCE = 0.1


class MapError(ValueError):
    """The inputs of a map do not fit together (wrong probe width, off-grid coords, no mpp)."""


# ---- geometry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapGrid:
    """Where map cells lie on the slide, in level-0 pixels.

    Cell ``(r, c)`` covers x in ``[x0 + c * step_x, x0 + (c + 1) * step_x)`` and y in
    ``[y0 + r * step_y, y0 + (r + 1) * step_y)`` (level-0 px; pixel ``x`` spans ``[x, x + 1)``).
    """

    x0: float
    y0: float
    step_x: float
    step_y: float
    patch_x: float  # patch footprint, level-0 px
    patch_y: float
    rows: int
    cols: int
    slide_mpp: float  # level-0 µm/px

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def span(self) -> tuple[int, int]:
        """Cells a patch covers along y and x: those whose centres lie in its footprint (>= 1)."""

        def cells(patch: float, step: float) -> int:
            return max(1, math.ceil(patch / step - 0.5 - 1e-6))

        return cells(self.patch_y, self.step_y), cells(self.patch_x, self.step_x)

    @property
    def scale(self) -> tuple[float, float]:
        """µm per map cell (y, x): napari's ``scale``."""
        return (self.step_y * self.slide_mpp, self.step_x * self.slide_mpp)

    @property
    def translate(self) -> tuple[float, float]:
        """World position (µm, y, x) of cell (0, 0)'s centre: napari's ``translate``.

        Level-0 pixel ``x`` is centred at ``x * mpp``, so its left edge is at ``(x - 0.5) * mpp``;
        cell 0 starts at level-0 ``x0`` and its centre is half a cell further.
        """
        x, y = level0_to_um([self.x0 + 0.5 * self.step_x, self.y0 + 0.5 * self.step_y], self.slide_mpp)
        return (float(y), float(x))

    def cells(self, coords: np.ndarray, what: str = "coords") -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the cell at each patch's top-left corner; off-grid coords refused."""
        xy = np.asarray(coords, np.float64).reshape(-1, 2)
        fx = (xy[:, 0] - self.x0) / self.step_x
        fy = (xy[:, 1] - self.y0) / self.step_y
        cols, rows = np.rint(fx).astype(np.int64), np.rint(fy).astype(np.int64)
        off = np.maximum(np.abs(fx - cols), np.abs(fy - rows))
        bad = (off > GRID_TOLERANCE) | (cols < 0) | (rows < 0) | (cols >= self.cols) | (rows >= self.rows)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MapError(
                f"{what}: patch ({int(xy[i, 0])}, {int(xy[i, 1])}) is not on the map's grid"
                f" (origin {self.x0:g}, {self.y0:g}, step {self.step_x:.4g} x {self.step_y:.4g} level-0 px,"
                f" {self.cols} x {self.rows} cells); were these patches cut from another slide or grid?"
            )
        return rows, cols

    def cell_bounds(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 box (x0, y0, x1, y1) of one cell."""
        x = self.x0 + col * self.step_x
        y = self.y0 + row * self.step_y
        return (x, y, x + self.step_x, y + self.step_y)

    def to_dict(self) -> dict[str, Any]:
        return {
            "x0": self.x0, "y0": self.y0, "step_x": self.step_x, "step_y": self.step_y,
            "patch_x": self.patch_x, "patch_y": self.patch_y, "rows": self.rows, "cols": self.cols,
            "slide_mpp": self.slide_mpp,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MapGrid:
        return cls(
            x0=float(d["x0"]), y0=float(d["y0"]), step_x=float(d["step_x"]), step_y=float(d["step_y"]),
            patch_x=float(d["patch_x"]), patch_y=float(d["patch_y"]), rows=int(d["rows"]),
            cols=int(d["cols"]), slide_mpp=float(d["slide_mpp"]),
        )

    @classmethod
    def from_transform(
        cls, scale: Sequence[float], translate: Sequence[float], slide_mpp: float, shape: Sequence[int]
    ) -> MapGrid:
        """The grid of a layer drawn with napari ``scale``/``translate`` (µm) over a slide."""
        step_y, step_x = (float(s) / slide_mpp for s in scale[-2:])
        cx, cy = um_to_level0([float(translate[-1]), float(translate[-2])], slide_mpp)  # cell (0, 0)'s centre
        return cls(
            x0=float(cx - 0.5 * step_x), y0=float(cy - 0.5 * step_y), step_x=step_x, step_y=step_y,
            patch_x=step_x, patch_y=step_y, rows=int(shape[-2]), cols=int(shape[-1]),
            slide_mpp=float(slide_mpp),
        )


def _axis_step(origins: np.ndarray, hint: float | None) -> float | None:
    """The grid step along one axis from the distinct patch origins (None: a single origin)."""
    u = np.unique(origins.astype(np.float64))
    if len(u) < 2:
        return None
    span = u[-1] - u[0]
    if hint is None or hint <= 0:
        hint = float(np.diff(u).min())
    n = max(1, round(span / hint))
    step = span / n
    k = (u - u[0]) / step
    if np.abs(k - np.rint(k)).max() > GRID_TOLERANCE or abs(step - hint) > STEP_TOLERANCE * hint:
        raise MapError(
            f"patch origins are not on a regular grid of {hint:.4g} level-0 px"
            f" (e.g. {u[:4].tolist()}); a map needs a patch grid"
        )
    return float(step)


def build_grid(
    coords: np.ndarray,
    patch_size_level0: float,
    step_hint: float | None,
    slide_mpp: float,
) -> MapGrid:
    """The map grid of patches at ``coords`` (level-0 top-left x, y), each ``patch_size_level0`` wide.

    The step is read from the coords (their span over a whole number of nominal steps), so
    grids whose origins are rounded to whole pixels (898 px for a nominal 897.8) stay exact.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if len(coords) == 0:
        raise MapError("no patches: an empty map has no grid")
    if not (slide_mpp and slide_mpp > 0):
        raise MapError("the slide's level-0 µm/px is unknown; a map cannot be placed on it")
    sx = _axis_step(coords[:, 0], step_hint)
    sy = _axis_step(coords[:, 1], step_hint)
    fallback = step_hint or float(patch_size_level0)
    step_x = sx if sx is not None else (sy if sy is not None else fallback)
    step_y = sy if sy is not None else step_x
    x0, y0 = float(coords[:, 0].min()), float(coords[:, 1].min())
    partial = MapGrid(x0, y0, step_x, step_y, float(patch_size_level0), float(patch_size_level0), 1, 1,
                      float(slide_mpp))
    span_y, span_x = partial.span
    cols = round(float(coords[:, 0].max() - x0) / step_x) + span_x
    rows = round(float(coords[:, 1].max() - y0) / step_y) + span_y
    return MapGrid(x0, y0, step_x, step_y, partial.patch_x, partial.patch_y, int(rows), int(cols),
                   float(slide_mpp))


def grid_for_features(
    data: FeatureSet | FeatureHeader, slide_mpp: float | None = None, what: str = "features"
) -> MapGrid:
    """The map grid of a features file, from its ``coords`` attributes (ours or TRIDENT's).

    ``slide_mpp`` overrides the file's ``slide_mpp`` (TRIDENT files do not record it).
    """
    ca, attrs = data.coords_attrs, data.attrs
    given = (slide_mpp, attrs.get("slide_mpp"), ca.get("slide_mpp"))
    base = next(filter(None, map(positive_float, given)), None)
    if base is None:
        raise MapError(
            f"{what}: the file records no slide µm/px (slide_mpp); pass the slide's level-0 µm/px"
            " (slide_mpp=..., xmag maps --slide-mpp)"
        )
    mpp = positive_float(ca.get("mpp")) or positive_float(attrs.get("mpp"))
    patch = positive_float(ca.get("patch_size")) or positive_float(attrs.get("patch_size"))
    size0 = positive_float(ca.get("patch_size_level0_exact")) or positive_float(ca.get("patch_size_level0"))
    if size0 is None and patch and mpp:
        size0 = patch * mpp / base
    if size0 is None:
        raise MapError(f"{what}: the coords carry no patch_size_level0; cannot tell how big a patch is")
    stride = positive_float(ca.get("stride")) or positive_float(attrs.get("stride"))
    overlap = ca.get("overlap")
    if stride and mpp:
        hint: float | None = stride * mpp / base
    elif stride and patch:
        hint = size0 * stride / patch
    elif patch and overlap is not None and positive_float(patch - float(overlap)):
        hint = size0 * (patch - float(overlap)) / patch  # TRIDENT: overlap in target px
    else:
        hint = None
    return build_grid(data.coords, size0, hint, base)


# ---- rasters --------------------------------------------------------------------------------
def _cover(
    grid: MapGrid, rows: np.ndarray, cols: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """(flat cell index, distance of the patch centre to the cell centre in steps) per covered cell."""
    span_y, span_x = grid.span
    half_y, half_x = grid.patch_y / grid.step_y / 2, grid.patch_x / grid.step_x / 2
    for dy in range(span_y):
        for dx in range(span_x):
            r, c = rows + dy, cols + dx
            inside = (r < grid.rows) & (c < grid.cols)
            dist = math.hypot(dy + 0.5 - half_y, dx + 0.5 - half_x)
            yield (r * grid.cols + c)[inside], inside, dist


def rasterize_mean(grid: MapGrid, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-cell mean of the finite values of the covering patches; NaN where none.

    ``values`` (N,) gives an (H, W) map, (N, C) a (C, H, W) map.
    """
    values = np.asarray(values, np.float64)
    vec = values.ndim == 2
    v = values if vec else values[:, None]
    if len(v) != len(rows):
        raise MapError(f"{len(rows)} patches but {len(v)} values")
    n = grid.rows * grid.cols
    finite = np.isfinite(v)
    clean = np.where(finite, v, 0.0)
    sums = np.zeros((v.shape[1], n))
    counts = np.zeros((v.shape[1], n))
    for flat, inside, _ in _cover(grid, rows, cols):
        for ch in range(v.shape[1]):
            sums[ch] += np.bincount(flat, clean[inside, ch], minlength=n)
            counts[ch] += np.bincount(flat, finite[inside, ch].astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    out = mean.reshape(v.shape[1], grid.rows, grid.cols).astype(np.float32)
    return out if vec else out[0]


def rasterize_labels(grid: MapGrid, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-cell majority label of the covering patches (labels >= 1; 0 is left out).

    Ties go to the label of the covering patch whose centre is nearest the cell's centre, then
    to the smaller label. Cells no patch covers are 0.
    """
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(rows):
        raise MapError(f"{len(rows)} patches but {len(labels)} labels")
    k = int(labels.max(initial=0))
    n = grid.rows * grid.cols
    flat_counts = np.zeros((k + 1) * n)
    flat_nearest = np.full((k + 1) * n, np.inf)
    for flat, inside, dist in _cover(grid, rows, cols):
        lab = labels[inside]
        keep = lab > 0
        idx = lab[keep] * n + flat[keep]
        flat_counts += np.bincount(idx, minlength=(k + 1) * n)
        np.minimum.at(flat_nearest, idx, dist)
    counts = flat_counts.reshape(k + 1, n)
    nearest = flat_nearest.reshape(k + 1, n)
    best = np.zeros(n, np.int64)
    best_count = np.zeros(n)
    best_dist = np.full(n, np.inf)
    for lab in range(1, k + 1):  # ascending: an exact tie keeps the smaller label
        c, d = counts[lab], nearest[lab]
        better = (c > best_count) | ((c == best_count) & (c > 0) & (d < best_dist - 1e-9))
        best = np.where(better, lab, best)
        best_count = np.where(better, c, best_count)
        best_dist = np.where(better, d, best_dist)
    dtype = np.uint8 if k < 256 else (np.uint16 if k < 65536 else np.int32)
    return best.reshape(grid.rows, grid.cols).astype(dtype)


