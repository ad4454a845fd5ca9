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
        """A napari layer data tuple ``(data, kwargs, layer_type)`` aligned with the slide layer."""
        meta = {"xmag_map": json_safe(self.metadata)}
        random = bool(self.metadata.get("weights_random"))
        kw: dict[str, Any] = {
            "name": tagged_name(self.name, random),
            "scale": tuple(self.scale),
            "translate": tuple(self.translate),
            "units": ("um", "um"),
            "metadata": meta,
        }
        if self.is_labels:
            kw.update(colormap=label_colormap(self.colors), opacity=0.5)
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
                name=[tagged_name(_channel_name(self.name, c), random) for c in names],
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


