"""Maps: per-patch values (PCA, k-means, probe, attention, cosine) -> arrays aligned to the slide.

One map cell per grid step. A features file's patches sit on a regular grid of level-0
origins ``step`` px apart (``step = stride * mpp / slide_mpp``, read exactly from the coords);
map cell ``(r, c)`` covers level-0 x in ``[x0 + c * step_x, x0 + (c + 1) * step_x)`` and y
likewise, where ``(x0, y0)`` is the top-left corner of the top-left patch. A patch covers the
cells whose centres lie inside its footprint, so with ``stride = patch / 2`` every patch covers
2 x 2 cells and every inner cell is covered by 4 patches.

* Float maps (PCA, probe probabilities, attention, cosine) hold, in each cell, the **mean** of
  the values of every patch that covers it (NaN values, e.g. unscored cosine, are left out);
  a cell no patch covers is NaN. Averaging, not blurring: a cell is never influenced by a patch
  that does not cover it.
* Label maps (k-means) hold the **majority** label of the covering patches; a tie goes to the
  label of the patch whose centre is nearest the cell's centre, then to the smaller label.
  0 is background (no patch). Probe segmentation is the argmax of the averaged probabilities.

In napari world coordinates (µm, the slide layer made by our reader: level-0 pixel ``x`` is
centred at ``x * mpp``), a map has ``scale = step * mpp`` and
``translate = (x0 - 0.5) * mpp + 0.5 * step * mpp`` per axis, so each cell covers exactly the
level-0 pixels it stands for.

Fitting (PCA, k-means, probe predictions) is done once per features file and cached in memory,
keyed by the file's path, modification time and size, so maps re-render in milliseconds.
numpy and scikit-learn only: no napari, Qt or torch.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import __version__
from ._json import json_safe
from ._atomic import OutputKind, atomic_path
from ._paths import file_problem
from .features import FeatureFileError, FeatureSet, read_features, read_header

__all__ = [
    "KINDS",
    "LABEL_KINDS",
    "MAP_FORMAT",
    "PALETTE",
    "LinearProbe",
    "MapError",
    "MapGrid",
    "SlideMap",
    "attention_map",
    "build_grid",
    "cache_info",
    "clear_cache",
    "cosine_map",
    "grid_for_features",
    "kmeans_map",
    "label_colors",
    "load_probe",
    "make_maps",
    "pca_map",
    "probe_maps",
    "rasterize_labels",
    "rasterize_mean",
    "read_attention_values",
    "save_probe",
]

KINDS = ("pca", "kmeans", "probe", "attention", "cosine")
#: Kinds whose maps are integer labels (0 = no patch) rather than float images; "labels" and
#: "heatmap" are the generic kinds of layers saved from napari without a map kind of their own.
LABEL_KINDS = ("kmeans", "probe-labels", "labels")
MAP_FORMAT = "napari-xmag-map"
MAP_FORMAT_VERSION = 1
PROBE_FORMAT = "napari-xmag-linear-probe"
#: How far (in grid steps) an origin may sit from the grid before the coords are refused.
GRID_TOLERANCE = 0.25
#: How far the step read from the coords may be from the nominal one (origins are rounded to
#: the pixels of the level read, so a few percent on coarse levels).
STEP_TOLERANCE = 0.1
#: k-means restarts, and the most patches it is fitted on (the rest are assigned to a centre).
KMEANS_N_INIT = 3
KMEANS_MAX_FIT = 10_000

#: Label colours (tab20 order, dark shades first): label k gets PALETTE[(k - 1) % 20].
PALETTE = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
        [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
        [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
    ],
    dtype=np.uint8,
)


class MapError(ValueError):
    """The inputs of a map do not fit together (wrong probe width, off-grid coords, no mpp)."""


def label_colors(n: int) -> list[list[int]]:
    """RGB 0-255 colours of labels 1..n."""
    return [PALETTE[i % len(PALETTE)].tolist() for i in range(n)]


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
        mpp = self.slide_mpp
        return (
            (self.y0 - 0.5 + 0.5 * self.step_y) * mpp,
            (self.x0 - 0.5 + 0.5 * self.step_x) * mpp,
        )

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
        ints = ("rows", "cols")
        return cls(**{k: (int(d[k]) if k in ints else float(d[k])) for k in cls.__dataclass_fields__})

    @classmethod
    def from_transform(
        cls, scale: Sequence[float], translate: Sequence[float], slide_mpp: float, shape: Sequence[int]
    ) -> MapGrid:
        """The grid of a layer drawn with napari ``scale``/``translate`` (µm) over a slide."""
        step_y, step_x = (float(s) / slide_mpp for s in scale[-2:])
        ty, tx = (float(t) / slide_mpp for t in translate[-2:])
        return cls(
            x0=tx + 0.5 - 0.5 * step_x, y0=ty + 0.5 - 0.5 * step_y, step_x=step_x, step_y=step_y,
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
    fallback = step_hint if step_hint else float(patch_size_level0)
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


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def grid_for_features(data: FeatureSet, slide_mpp: float | None = None, what: str = "features") -> MapGrid:
    """The map grid of a features file, from its ``coords`` attributes (ours or TRIDENT's).

    ``slide_mpp`` overrides the file's ``slide_mpp`` (TRIDENT files do not record it).
    """
    ca, attrs = data.coords_attrs, data.attrs
    base = _num(slide_mpp) or _num(attrs.get("slide_mpp")) or _num(ca.get("slide_mpp"))
    if base is None:
        raise MapError(
            f"{what}: the file records no slide µm/px (slide_mpp); pass the slide's level-0 µm/px"
            " (slide_mpp=..., xmag maps --slide-mpp)"
        )
    mpp = _num(ca.get("mpp")) or _num(attrs.get("mpp"))
    patch = _num(ca.get("patch_size")) or _num(attrs.get("patch_size"))
    size0 = _num(ca.get("patch_size_level0_exact")) or _num(ca.get("patch_size_level0"))
    if size0 is None and patch and mpp:
        size0 = patch * mpp / base
    if size0 is None:
        raise MapError(f"{what}: the coords carry no patch_size_level0; cannot tell how big a patch is")
    stride = _num(ca.get("stride")) or _num(attrs.get("stride"))
    overlap = ca.get("overlap")
    if stride and mpp:
        hint: float | None = stride * mpp / base
    elif stride and patch:
        hint = size0 * stride / patch
    elif patch and overlap is not None and _num(patch - float(overlap)):
        hint = size0 * (patch - float(overlap)) / patch  # TRIDENT: overlap in target px
    else:
        hint = None
    return build_grid(data.coords, size0, hint, base)


# ---- rasters --------------------------------------------------------------------------------
def _cover(grid: MapGrid, rows: np.ndarray, cols: np.ndarray):  # type: ignore[no-untyped-def]
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
    counts = np.zeros((k + 1) * n)
    nearest = np.full((k + 1) * n, np.inf)
    for flat, inside, dist in _cover(grid, rows, cols):
        lab = labels[inside]
        keep = lab > 0
        idx = lab[keep] * n + flat[keep]
        counts += np.bincount(idx, minlength=(k + 1) * n)
        np.minimum.at(nearest, idx, dist)
    counts = counts.reshape(k + 1, n)
    nearest = nearest.reshape(k + 1, n)
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


# ---- the map --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SlideMap:
    """An array aligned to a slide: napari's ``scale``/``translate`` (µm, y, x) put it on the
    slide layer made by our reader.

    ``data`` is (H, W) float32 (attention, cosine; NaN = no value), (H, W, 3) float32 RGB in
    [0, 1] or uint8 (pca), (C, H, W) float32 class probabilities (probe), or (H, W) integer
    labels with 0 = no patch (kmeans, probe-labels).
    """

    data: np.ndarray
    scale: tuple[float, float]
    translate: tuple[float, float]
    kind: str
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    grid: MapGrid | None = None

    @property
    def is_labels(self) -> bool:
        return self.kind in LABEL_KINDS

    @property
    def rgb(self) -> bool:
        return self.kind == "pca" and self.data.ndim == 3 and self.data.shape[-1] in (3, 4)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes") or [])

    @property
    def colors(self) -> list[list[int]]:
        return [list(c) for c in self.metadata.get("colors") or []]

    def layer_data(self) -> tuple[Any, dict[str, Any], str]:
        """A napari layer data tuple ``(data, kwargs, layer_type)`` aligned with the slide layer."""
        meta = {"xmag_map": json_safe(self.metadata)}
        kw: dict[str, Any] = {
            "name": self.name,
            "scale": tuple(self.scale),
            "translate": tuple(self.translate),
            "units": ("um", "um"),
            "metadata": meta,
        }
        if self.is_labels:
            colors = self.colors
            cmap: dict[Any, Any] = {None: [0, 0, 0, 0], 0: [0, 0, 0, 0]}
            for i, rgb in enumerate(colors, start=1):
                cmap[i] = [c / 255 for c in rgb] + [1.0]
            kw.update(colormap=cmap, opacity=0.5)
            if self.classes:
                kw["features"] = {"index": list(range(len(self.classes) + 1)),
                                  "class": ["background", *self.classes]}
            return self.data, kw, "labels"
        if self.rgb:
            # RGBA, transparent where no patch: napari draws NaN RGB as black.
            if self.data.dtype == np.uint8:
                alpha = np.where(self.data.any(axis=-1), 255, 0).astype(np.uint8)
                rgba = np.concatenate([self.data, alpha[..., None]], axis=-1)
                kw.update(rgb=True, opacity=0.7, contrast_limits=(0, 255))
            else:
                alpha = np.isfinite(self.data).all(axis=-1).astype(np.float32)
                rgba = np.concatenate([np.nan_to_num(self.data), alpha[..., None]], axis=-1)
                kw.update(rgb=True, opacity=0.7, contrast_limits=(0.0, 1.0))
            return rgba, kw, "image"
        if self.data.ndim == 3:  # (C, H, W): one layer per class, in the class's colour
            names = self.classes or [str(i) for i in range(self.data.shape[0])]
            colors = self.colors or label_colors(len(names))
            kw.update(
                channel_axis=0,
                name=[f"{self.name} {c}" for c in names],
                colormap=[_channel_colormap(c, rgb) for c, rgb in zip(names, colors, strict=False)],
                contrast_limits=[(0.0, 1.0)] * len(names),
                blending="additive",
                opacity=0.7,
            )
            return self.data, kw, "image"
        lo, hi = _limits(self.data, self.kind)
        kw.update(colormap=_HEATMAP_COLORMAP.get(self.kind, "viridis"), contrast_limits=(lo, hi), opacity=0.6)
        return self.data, kw, "image"


_HEATMAP_COLORMAP = {"attention": "inferno", "cosine": "viridis", "heatmap": "viridis"}


def _channel_colormap(name: str, rgb: Sequence[int]) -> dict[str, Any]:
    color = [c / 255 for c in rgb]
    return {"name": f"xmag {name}", "colors": [[0.0, 0.0, 0.0, 1.0], [*color, 1.0]]}


def _limits(data: np.ndarray, kind: str) -> tuple[float, float]:
    """(0, 1) for values in [0, 1] (percentiles, probabilities), else the finite range."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0 and kind != "cosine":
        return (0.0, 1.0)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _base_metadata(header: _Header, grid: MapGrid, kind: str, **extra: Any) -> dict[str, Any]:
    attrs, ca = header.attrs, header.coords_attrs
    slide_path = str(attrs.get("slide_path") or "")
    slide_name = str(ca.get("name") or (Path(slide_path).stem if slide_path else "") or
                     (Path(header.path).stem if header.path else "slide"))
    meta = {
        "format": MAP_FORMAT,
        "format_version": MAP_FORMAT_VERSION,
        "kind": kind,
        "slide_path": slide_path,
        "slide_name": slide_name,
        "slide_mpp": grid.slide_mpp,
        "model": str(attrs.get("model") or ""),
        "features_path": str(header.path or ""),
        "weights_random": bool(attrs.get("weights_random", False)),
        "patches": len(header.coords),
        "patch_mpp": _num(ca.get("mpp")) or _num(attrs.get("mpp")),
        "grid": grid.to_dict(),
        "xmag_version": __version__,
    }
    meta.update(extra)
    return json_safe(meta)


def _make(data: np.ndarray, grid: MapGrid, kind: str, name: str, meta: dict[str, Any]) -> SlideMap:
    return SlideMap(data=data, scale=grid.scale, translate=grid.translate, kind=kind, name=name,
                    metadata=meta, grid=grid)


# ---- sources and the cache ------------------------------------------------------------------
class _Header(NamedTuple):
    coords: np.ndarray
    attrs: dict[str, Any]
    coords_attrs: dict[str, Any]
    path: str | None


class _FileKey(NamedTuple):
    path: str
    mtime_ns: int
    size: int


def _file_key(path: str | os.PathLike[str], what: str = "features file") -> _FileKey:
    p = Path(path)
    if not p.exists():
        raise FeatureFileError(f"{p}: no such {what}")
    st = p.stat()
    if p.is_dir():  # a zarr store: its newest entry
        mtimes = [st.st_mtime_ns] + [q.stat().st_mtime_ns for q in p.rglob("*")]
        return _FileKey(str(p.resolve()), max(mtimes), 0)
    return _FileKey(str(p.resolve()), st.st_mtime_ns, st.st_size)


Source = str | os.PathLike[str] | FeatureSet


def _fit_pca(features: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """(N, 3) first three principal components, each robust-scaled by its percentiles to [0, 1]."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, np.float64)
    n_comp = min(3, x.shape[0], x.shape[1])
    out = np.zeros((len(x), 3))
    if n_comp >= 1 and len(x) >= 2:
        out[:, :n_comp] = PCA(n_components=n_comp, random_state=0).fit_transform(x)
    lo, hi = np.percentile(out, percentiles, axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((out - lo) / width, 0.0, 1.0).astype(np.float32)


def _fit_kmeans(features: np.ndarray, k: int = 8, seed: int = 0) -> np.ndarray:
    """(N,) k-means labels 1..K: scikit-learn KMeans (k-means++, ``n_init`` = 3, fixed seed),
    fitted on at most :data:`KMEANS_MAX_FIT` patches (a seeded subsample), then every patch is
    assigned to its nearest centre."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if k < 1:
        raise MapError(f"k-means needs at least 1 cluster, got {k}")
    x = np.asarray(features, np.float64)
    k = min(k, len(x))
    fit = x
    if len(x) > KMEANS_MAX_FIT:
        pick = np.random.default_rng(seed).choice(len(x), KMEANS_MAX_FIT, replace=False)
        fit = x[np.sort(pick)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(fit)
    labels = km.labels_ if fit is x else km.predict(x)
    return (labels + 1).astype(np.int32)


_FITTERS = {"pca": _fit_pca, "kmeans": _fit_kmeans}


@functools.lru_cache(maxsize=32)
def _fitted(key: _FileKey, kind: str, params: tuple[tuple[str, Any], ...]) -> np.ndarray:
    """Per-patch values of a features file; computed once per (file version, kind, params)."""
    data = read_features(key.path)
    if kind == "probe":
        given = dict(params)
        values = _predict(load_probe(given["probe"], trust_pickle=given["trust_pickle"]), data.features, key.path)
    else:
        values = _FITTERS[kind](data.features, **dict(params))
    values.flags.writeable = False  # shared by every render
    return values


@functools.lru_cache(maxsize=32)
def _header(key: _FileKey) -> _Header:
    """Coords and attributes of a features file, without reading the features."""
    header = read_header(key.path)
    header.coords.flags.writeable = False
    return _Header(header.coords, header.attrs, header.coords_attrs, key.path)


def cache_info() -> Any:
    """``functools`` cache statistics of the fits: ``misses`` counts PCA/k-means/probe computations."""
    return _fitted.cache_info()


def clear_cache() -> None:
    _fitted.cache_clear()
    _header.cache_clear()


def _source_header(source: Source) -> _Header:
    if isinstance(source, FeatureSet):
        return _Header(source.coords, source.attrs, source.coords_attrs, None)
    return _header(_file_key(source))


def _patch_values(source: Source, kind: str, **params: Any) -> np.ndarray:
    """Per-patch values of ``kind``: cached for a features file, computed for a FeatureSet."""
    if isinstance(source, FeatureSet):
        if kind == "probe":
            return _predict(params["probe"], source.features, "features")
        return _FITTERS[kind](source.features, **params)
    return _fitted(_file_key(source), kind, tuple(sorted(params.items())))


# ---- probes ---------------------------------------------------------------------------------
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
    with atomic_path(path, PROBE_KIND, overwrite=overwrite) as tmp, tmp.open("wb") as fh:  # savez adds no .npz
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
        raise FeatureFileError(f"{path}: no such probe file" if problem == "no such file" else f"{path}: {problem}")
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
            import joblib

            probe = joblib.load(path)
        else:
            raise MapError(f"{path}: a probe file is .npz (save_probe) or .skops (scikit-learn via skops)")
    except MapError:
        raise
    except (OSError, KeyError, ValueError, EOFError, ImportError, AttributeError, TypeError) as err:
        raise FeatureFileError(f"{path}: not a readable probe file ({err})") from None
    if not hasattr(probe, "predict_proba"):
        raise MapError(f"{path}: {type(probe).__name__} has no predict_proba")
    return probe


def _load_skops(path: Path) -> Any:
    """A skops file whose types skops trusts by default; its untrusted types are named otherwise."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    if untrusted:
        shown = ", ".join(untrusted[:5]) + (f" and {len(untrusted) - 5} more" if len(untrusted) > 5 else "")
        raise MapError(f"{path}: refused: it names types skops does not trust ({shown}), which could run"
                       " code when loaded")
    return skops.io.load(path)


def _probe_width(probe: Any) -> int | None:
    n = getattr(probe, "n_features_in_", None)
    return int(n) if n is not None else None


def _predict(probe: Any, features: np.ndarray, what: str) -> np.ndarray:
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


def _probe_classes(probe: Any, n: int) -> list[str]:
    classes = getattr(probe, "classes_", None)
    if classes is None and hasattr(probe, "steps"):
        classes = getattr(probe.steps[-1][1], "classes_", None)
    names = [str(c) for c in classes] if classes is not None else []
    return names if len(names) == n else [f"class {i}" for i in range(n)]


# ---- the map kinds --------------------------------------------------------------------------
def _header_grid(source: Source, slide_mpp: float | None) -> tuple[_Header, MapGrid]:
    header = _source_header(source)
    what = header.path or "features"
    empty = np.empty((len(header.coords), 0), np.float32)
    fs = FeatureSet(header.coords, empty, header.attrs, header.coords_attrs)
    return header, grid_for_features(fs, slide_mpp, what)


def _name(meta: dict[str, Any], label: str) -> str:
    return f"{meta['slide_name']} {label}"


def pca_map(
    source: Source,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    dtype: str = "float32",
    slide_mpp: float | None = None,
) -> SlideMap:
    """The first three principal components as RGB (H, W, 3): each component robust-scaled to
    [0, 1] by its ``percentiles`` over the patches, then averaged per cell. ``dtype="uint8"``
    gives 0-255 with 0 where no patch; float32 has NaN there."""
    if dtype not in ("float32", "uint8"):
        raise MapError(f"a PCA map is float32 or uint8, not {dtype!r}")
    header, grid = _header_grid(source, slide_mpp)
    values = _patch_values(source, "pca", percentiles=tuple(float(p) for p in percentiles))
    rows, cols = grid.cells(header.coords)
    rgb = np.moveaxis(rasterize_mean(grid, rows, cols, values), 0, -1)
    if dtype == "uint8":
        rgb = np.where(np.isfinite(rgb), np.rint(np.nan_to_num(rgb) * 255), 0).astype(np.uint8)
    meta = _base_metadata(header, grid, "pca", percentiles=list(percentiles), classes=["PC1", "PC2", "PC3"],
                          colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                          values="first 3 principal components, robust-scaled to [0, 1], mean per cell")
    return _make(np.ascontiguousarray(rgb), grid, "pca", _name(meta, "PCA"), meta)


def kmeans_map(source: Source, k: int = 8, *, seed: int = 0, slide_mpp: float | None = None) -> SlideMap:
    """k-means clusters of the patch features as labels 1..K (0 = no patch); majority per cell."""
    header, grid = _header_grid(source, slide_mpp)
    labels = _patch_values(source, "kmeans", k=int(k), seed=int(seed))
    rows, cols = grid.cells(header.coords)
    data = rasterize_labels(grid, rows, cols, labels)
    n = int(labels.max(initial=0))
    meta = _base_metadata(header, grid, "kmeans", clusters=n, clusters_requested=int(k), seed=int(seed),
                          classes=[f"cluster {i}" for i in range(1, n + 1)], colors=label_colors(n),
                          values="k-means cluster, majority of the covering patches")
    return _make(data, grid, "kmeans", _name(meta, f"k-means (k={n})"), meta)


def probe_maps(
    source: Source, probe: Any, *, slide_mpp: float | None = None, trust_pickle: bool = False
) -> tuple[SlideMap, SlideMap]:
    """Class probabilities (C, H, W) averaged per cell (they sum to 1 in every covered cell),
    and the segmentation: the argmax class of each cell as label class_index + 1 (0 = no patch).

    ``probe`` is any object with ``predict_proba`` (scikit-learn classifier or pipeline,
    :class:`LinearProbe`) or a probe file (:func:`load_probe`; ``trust_pickle`` as there).
    """
    header, grid = _header_grid(source, slide_mpp)
    if isinstance(probe, (str, os.PathLike)):
        probe_obj = load_probe(probe, trust_pickle=trust_pickle)
        probe_src = str(probe)
        if isinstance(source, FeatureSet):
            prob = _predict(probe_obj, source.features, "features")
        else:  # cached per (features file, probe file) versions
            key = _file_key(probe, "probe file")
            prob = _patch_values(source, "probe", probe=key.path, probe_mtime=key.mtime_ns,
                                 trust_pickle=trust_pickle)
    else:  # an in-memory object may be refitted in place: never cached
        probe_obj, probe_src = probe, type(probe).__name__
        features = source.features if isinstance(source, FeatureSet) else read_features(source).features
        prob = _predict(probe_obj, features, str(header.path or "features"))
    rows, cols = grid.cells(header.coords)
    heat = rasterize_mean(grid, rows, cols, prob)
    classes = _probe_classes(probe_obj, prob.shape[1])
    covered = np.isfinite(heat).all(axis=0)
    seg = np.where(covered, np.argmax(np.nan_to_num(heat, nan=-1.0), axis=0) + 1, 0)
    seg = seg.astype(np.uint8 if len(classes) < 256 else np.uint16)
    colors = label_colors(len(classes))
    common = {"probe": probe_src, "classes": classes, "colors": colors}
    meta_p = _base_metadata(header, grid, "probe", **common, values="class probability, mean per cell")
    meta_s = _base_metadata(header, grid, "probe-labels", **common,
                            values="argmax of the mean class probabilities, label = class index + 1")
    return (
        _make(heat, grid, "probe", _name(meta_p, "probe"), meta_p),
        _make(seg, grid, "probe-labels", _name(meta_s, "probe classes"), meta_s),
    )


def attention_map(
    source: Source,
    coords: np.ndarray,
    values: np.ndarray,
    *,
    slide_mpp: float | None = None,
    name: str = "attention",
    note: str = "",
) -> SlideMap:
    """Per-patch values (e.g. ABMIL attention, or its percentile ranks) at ``coords`` (level-0
    top-left x, y, on the features file's grid), averaged per cell; NaN where no patch."""
    header, grid = _header_grid(source, slide_mpp)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    values = np.asarray(values, np.float64).reshape(-1)
    if len(coords) != len(values):
        raise MapError(f"{len(coords)} coords but {len(values)} attention values")
    rows, cols = grid.cells(coords, "attention")
    data = rasterize_mean(grid, rows, cols, values)
    meta = _base_metadata(header, grid, "attention", values=note or "per-patch value, mean per cell",
                          attention_patches=len(coords))
    return _make(data, grid, "attention", _name(meta, name), meta)


def cosine_map(comparison: Any) -> SlideMap:
    """Per-patch student-teacher cosine from a comparison folder (or a ComparisonResult) on the
    comparison's own 5x grid; NaN where not scored (the ridge map's training patches)."""
    from .compare import read_comparison

    result = comparison if hasattr(comparison, "cosine") else read_comparison(comparison)
    report = result.report
    slide_mpp = _num(report.get("slide_mpp"))
    if slide_mpp is None:
        raise MapError(f"{result.out_dir}: the comparison records no slide µm/px")
    student, teacher = report.get("student", {}), report.get("teacher", {})
    size0 = float(student["patch_size_level0"])
    grid = build_grid(result.coords, size0, size0, slide_mpp)
    rows, cols = grid.cells(result.coords, str(result.out_dir))
    data = rasterize_mean(grid, rows, cols, np.asarray(result.cosine, np.float64))
    slide_path = str(report.get("slide") or "")
    header = _Header(result.coords, {"slide_path": slide_path, "mpp": student.get("mpp")},
                     {"name": Path(slide_path).stem}, None)
    weights_random = any(bool(side.get("weights", {}).get("random")) for side in (student, teacher))
    meta = _base_metadata(
        header, grid, "cosine",
        model=f"{student.get('model', '?')} vs {teacher.get('model', '?')}",
        weights_random=weights_random, comparison=str(result.out_dir), mapping=report.get("mapping"),
        values="cosine in teacher space, mean per cell; NaN where not scored",
    )
    return _make(data, grid, "cosine", _name(meta, "cosine"), meta)


def make_maps(
    source: Source | None,
    kind: str,
    *,
    clusters: int = 8,
    seed: int = 0,
    probe: Any = None,
    comparison: Any = None,
    attention: tuple[np.ndarray, np.ndarray] | None = None,
    slide_mpp: float | None = None,
    trust_pickle: bool = False,
) -> list[SlideMap]:
    """The maps of one kind (probe gives the probabilities and the segmentation)."""
    if kind not in KINDS:
        raise MapError(f"map kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "cosine":
        if comparison is None:
            raise MapError("a cosine map needs a comparison folder (xmag compare --out)")
        result = cosine_map(comparison)
        if source is not None:  # a features file given beside it must be of the same slide
            header = _source_header(source)
            theirs = _base_metadata(header, result.grid, "cosine")["slide_name"]  # type: ignore[arg-type]
            if theirs != result.metadata["slide_name"]:
                raise MapError(
                    f"the comparison is of slide {result.metadata['slide_name']!r}, the features file"
                    f" of {theirs!r}"
                )
        return [result]
    if source is None:
        raise MapError(f"a {kind} map needs a features file")
    if kind == "pca":
        return [pca_map(source, slide_mpp=slide_mpp)]
    if kind == "kmeans":
        return [kmeans_map(source, clusters, seed=seed, slide_mpp=slide_mpp)]
    if kind == "probe":
        if probe is None:
            raise MapError("a probe map needs a probe (an object with predict_proba or a probe file)")
        return list(probe_maps(source, probe, slide_mpp=slide_mpp, trust_pickle=trust_pickle))
    if attention is None:
        raise MapError("an attention map needs per-patch (coords, values)")
    coords, values = attention
    return [attention_map(source, coords, values, slide_mpp=slide_mpp)]


def read_attention_values(
    path: str | os.PathLike[str], values: str = "percentile"
) -> tuple[np.ndarray, np.ndarray]:
    """(coords, values) from an attention h5 (``coords`` plus ``attention``/``attention_logits``).

    ``values``: ``"percentile"`` (each patch's attention rank in [0, 1], ties averaged: softmax
    weights shrink with the bag size, ranks do not), ``"attention"`` or ``"logits"``.
    """
    from .formats import h5

    path = Path(path)
    if values not in ("percentile", "attention", "logits"):
        raise MapError(f"attention values are percentile, attention or logits, not {values!r}")
    with h5.open_h5(path, FeatureFileError, "attention file") as f:
        coords = np.asarray(h5.read(f, "coords", path, FeatureFileError), np.int64)
        key = "attention_logits" if values == "logits" else "attention"
        v = np.asarray(h5.read(f, key, path, FeatureFileError), np.float64)
    if values == "percentile":
        from scipy.stats import rankdata

        v = (rankdata(v, method="average") - 1) / max(1, len(v) - 1) if len(v) > 1 else np.ones(len(v))
    return coords, v
