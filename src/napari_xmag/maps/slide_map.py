"""The map: an array aligned to a slide, with what napari needs to draw it there.

numpy only: no napari, Qt or torch. :meth:`SlideMap.layer_data` returns a napari layer data
tuple; the colours of label maps (:data:`PALETTE`) and the names of map kinds live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._paths import InputFileError
from .._values import json_safe, positive_float
from ..features import FeatureHeader
from ..provenance import tagged_name
from .grid import MapGrid

__all__ = [
    "KINDS",
    "LABEL_KINDS",
    "MAP_FORMAT",
    "MAP_FORMAT_VERSION",
    "PALETTE",
    "MapFileError",
    "SlideMap",
    "WriterError",
    "base_metadata",
    "label_colormap",
    "label_colors",
    "make_map",
    "map_name",
]

KINDS = ("pca", "kmeans", "probe", "attention", "cosine")
#: Kinds whose maps are integer labels (0 = no patch) rather than float images; "labels" and
#: "heatmap" are the generic kinds of layers saved from napari without a map kind of their own.
LABEL_KINDS = ("kmeans", "probe-labels", "labels")
MAP_FORMAT = "napari-xmag-map"
MAP_FORMAT_VERSION = 1

class WriterError(ValueError):
    """A map or layer cannot be written as asked: wrong layer type, no slide reference, bad shape."""


class MapFileError(InputFileError):
    """A map file (OME-Zarr, GeoJSON) that is not ours, is damaged, or declares too much."""


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


def label_colors(n: int) -> list[list[int]]:
    """RGB 0-255 colours of labels 1..n."""
    return [PALETTE[i % len(PALETTE)].tolist() for i in range(n)]


def cluster_names(n: int) -> list[str]:
    """The class names of k-means labels 1..n."""
    return [f"cluster {i}" for i in range(1, n + 1)]


def class_features(classes: Sequence[str]) -> dict[str, list[Any]]:
    """A Labels layer's features table naming label i (from 1) ``classes[i - 1]``; 0 is background."""
    return {"index": list(range(len(classes) + 1)), "class": ["background", *classes]}


def label_colormap(colors: Sequence[Sequence[int]]) -> dict[Any, list[float]]:
    """A napari labels colormap: label ``i`` (from 1) in ``colors[i - 1]`` (RGB 0-255), 0 clear."""
    cmap: dict[Any, list[float]] = {None: [0.0, 0.0, 0.0, 0.0], 0: [0.0, 0.0, 0.0, 0.0]}
    for i, rgb in enumerate(colors, start=1):
        cmap[i] = [c / 255 for c in rgb] + [1.0]
    return cmap


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
        """A napari layer data tuple ``(data, kwargs, layer_type)`` aligned with the slide layer.

        Where the map's last cells reach past the slide's edge (a patch at the edge is cut whole),
        the layer is drawn at :data:`EDGE_SUBCELLS` sub-cells per cell with the sub-cells past
        the edge left empty, so that it ends with the slide (its metadata's ``grid`` is then the
        finer one it is drawn on, and ``display_subcells`` says by how much)."""
        metadata, data, scale, translate = dict(self.metadata), self.data, self.scale, self.translate
        size = metadata.get("slide_size")
        clipped = clip_to_slide(data, self.grid, size, channels_first=data.ndim == 3 and not self.rgb,
                                labels=self.is_labels) if self.grid is not None and size else None
        if clipped is not None:
            data, fine, k = clipped
            scale, translate = fine.scale, fine.translate
            metadata.update(grid=fine.to_dict(), display_subcells=k)
        meta = {"xmag_map": json_safe(metadata)}
        random = bool(self.metadata.get("weights_random"))
        kw: dict[str, Any] = {
            "name": tagged_name(self.name, random),
            "scale": tuple(scale),
            "translate": tuple(translate),
            "units": ("um", "um"),
            "metadata": meta,
        }
        if self.is_labels:
            kw.update(colormap=label_colormap(self.colors), opacity=0.5)
            if self.classes:
                kw["features"] = class_features(self.classes)
            return data, kw, "labels"
        if self.rgb:
            # RGBA, transparent where no patch: napari draws NaN RGB as black.
            if data.dtype == np.uint8:
                alpha = np.where(data.any(axis=-1), 255, 0).astype(np.uint8)
                rgba = np.concatenate([data, alpha[..., None]], axis=-1)
                kw.update(rgb=True, opacity=0.7, contrast_limits=(0, 255))
            else:
                alpha = np.isfinite(data).all(axis=-1).astype(np.float32)
                rgba = np.concatenate([np.nan_to_num(data), alpha[..., None]], axis=-1)
                kw.update(rgb=True, opacity=0.7, contrast_limits=(0.0, 1.0))
            return rgba, kw, "image"
        if data.ndim == 3:  # (C, H, W): one layer per class, in the class's colour
            names = self.classes or [str(i) for i in range(data.shape[0])]
            colors = self.colors or label_colors(len(names))
            kw.update(
                channel_axis=0,
                name=[tagged_name(_channel_name(self.name, c), random) for c in names],
                colormap=[_channel_colormap(c, rgb) for c, rgb in zip(names, colors, strict=False)],
                contrast_limits=[(0.0, 1.0)] * len(names),
                blending="additive",
                opacity=0.7,
            )
            return data, kw, "image"
        lo, hi = _limits(data, self.kind)
        kw.update(colormap=_HEATMAP_COLORMAP.get(self.kind, "viridis"), contrast_limits=(lo, hi), opacity=0.6)
        return data, kw, "image"


#: Sub-cells per map cell along each axis where a map meets the slide's edge (display only):
#: what hangs past the edge is then under an eighth of a cell (56 µm at 5x, stride 224).
EDGE_SUBCELLS = 8
MAX_DISPLAY_CELLS = 16_000_000


def clip_to_slide(
    data: np.ndarray, grid: MapGrid, slide_size: Sequence[float], *, channels_first: bool = False,
    labels: bool = False,
) -> tuple[np.ndarray, MapGrid, int] | None:
    """``data`` at k sub-cells per cell with the sub-cells whose centre lies past the slide's
    edge emptied (0 for labels and uint8, NaN for floats), the finer grid and k; None when no
    cell reaches past the edge. The values of every sub-cell on the slide are the cell's own."""
    width, height = (float(v) for v in slide_size[:2])
    x_end, y_end = grid.x0 + grid.cols * grid.step_x, grid.y0 + grid.rows * grid.step_y
    if grid.x0 >= 0 and grid.y0 >= 0 and x_end <= width and y_end <= height:
        return None
    k = EDGE_SUBCELLS
    while k > 1 and grid.rows * grid.cols * k * k > MAX_DISPLAY_CELLS:
        k //= 2
    if k == 1:
        return None
    ay, ax = (1, 2) if channels_first else (0, 1)
    fine_data = np.repeat(np.repeat(data, k, axis=ay), k, axis=ax)
    fine = MapGrid(x0=grid.x0, y0=grid.y0, step_x=grid.step_x / k, step_y=grid.step_y / k,
                   patch_x=grid.patch_x, patch_y=grid.patch_y, rows=grid.rows * k, cols=grid.cols * k,
                   slide_mpp=grid.slide_mpp)
    cx = fine.x0 + (np.arange(fine.cols) + 0.5) * fine.step_x
    cy = fine.y0 + (np.arange(fine.rows) + 0.5) * fine.step_y
    outside = ((cy < 0) | (cy >= height))[:, None] | ((cx < 0) | (cx >= width))[None, :]
    empty = 0 if labels or not np.issubdtype(fine_data.dtype, np.floating) else np.nan
    if channels_first:
        fine_data[:, outside] = empty
    else:
        fine_data[outside] = empty
    return fine_data, fine, k


_HEATMAP_COLORMAP = {"attention": "inferno", "cosine": "viridis", "heatmap": "viridis"}


def _channel_name(name: str, channel: str) -> str:
    """``probe · slide`` and ``tumour`` -> ``probe tumour · slide``: the class stays up front."""
    label, sep, rest = name.partition(" · ")
    return f"{label} {channel}{sep}{rest}"


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
    if hi > lo:
        return (lo, hi)
    if kind == "cosine":  # one value (one scored patch): a range within cosine's own [-1, 1]
        return (max(-1.0, lo - 1.0), min(1.0, lo + 1.0)) if lo < 1.0 else (0.0, 1.0)
    return (lo - 0.5, lo + 0.5)


def base_metadata(header: FeatureHeader, grid: MapGrid, kind: str, **extra: Any) -> dict[str, Any]:
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
        "patch_mpp": positive_float(ca.get("mpp")) or positive_float(attrs.get("mpp")),
        # level 0 (width, height): where the slide ends, so that a layer can end with it
        "slide_size": ([int(ca["level0_width"]), int(ca["level0_height"])]
                       if ca.get("level0_width") and ca.get("level0_height") else None),
        "grid": grid.to_dict(),
        "xmag_version": __version__,
    }
    meta.update(extra)
    return json_safe(meta)


def map_name(label: str, slide_name: str) -> str:
    """A map's name, the kind first so that layers stay apart in napari's narrow layer list:
    ``PCA · CMU-1-Small-Region`` (:meth:`SlideMap.layer_data` adds ``· random weights``)."""
    return f"{label} · {slide_name}"


def make_map(data: np.ndarray, grid: MapGrid, kind: str, name: str, meta: dict[str, Any]) -> SlideMap:
    return SlideMap(data=data, scale=grid.scale, translate=grid.translate, kind=kind, name=name,
                    metadata=meta, grid=grid)


