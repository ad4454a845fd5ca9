"""Label maps as QuPath-compatible GeoJSON, and back.

A FeatureCollection in **level-0 pixel coordinates** (x right, y down; QuPath's convention):
by default one Feature per class whose geometry is a MultiPolygon of all its cells
(``split="region"``: one Polygon Feature per 4-connected region), with QuPath's
``properties.objectType = "annotation"`` and ``properties.classification = {"name", "color"}``.

The polygons are exact: the union of each class's cells (runs of cells along a row are merged
into boxes first), so a class's area is its number of cells times the cell area in level-0 px²
(up to the 0.001 px rounding of the coordinates). Holes (another class inside) are interior
rings. The collection's foreign member ``xmag`` (ignored by QuPath) holds the slide's µm/px and
the map's metadata, which is what lets :func:`geojson_layer_data` put the polygons back on the
slide in napari.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.errors import ShapelyError
from shapely.geometry import MultiPolygon, mapping, shape

from .._atomic import OutputKind, write_json
from .._memory import too_big
from .._paths import file_problem
from .._values import positive_float
from ..slide import level0_to_um
from .grid import MapGrid
from .slide_map import MapFileError, SlideMap, WriterError, label_colors

__all__ = [
    "GEOJSON_FORMAT",
    "Annotations",
    "geojson_layer_data",
    "is_annotation_geojson",
    "is_map_geojson",
    "label_polygons",
    "labels_to_geojson",
    "read_geojson",
    "write_geojson",
]

GEOJSON_FORMAT = "napari-xmag-geojson"
GEOJSON_VERSION = 1
#: The largest GeoJSON read (parsed JSON takes several times its size in memory).
MAX_GEOJSON_BYTES = 512 << 20
PRECISION = 1e-3  # level-0 px
SPLITS = ("class", "region")


def map_grid(m: SlideMap) -> MapGrid:
    """The map's cell geometry: its own grid, else the one its scale/translate and mpp imply."""
    shape = m.data.shape[-2:]
    if m.grid is not None and m.grid.shape == tuple(shape):
        return m.grid
    mpp = m.metadata.get("slide_mpp")
    if not mpp:
        raise WriterError(f"{m.name}: no slide µm/px in the map's metadata; cannot place it in level-0 px")
    return MapGrid.from_transform(m.scale, m.translate, float(mpp), shape)


def label_polygons(m: SlideMap) -> dict[int, Any]:
    """Each non-zero label's exact (Multi)Polygon in level-0 px (shapely), keyed by label."""
    if m.data.ndim != 2 or not np.issubdtype(m.data.dtype, np.integer):
        raise WriterError(
            f"{m.name}: GeoJSON is written from 2D integer labels, not {m.data.dtype} {m.data.shape}"
        )
    grid = map_grid(m)
    data = np.asarray(m.data)
    rows, cols = data.shape
    xe = grid.x0 + np.arange(cols + 1) * grid.step_x  # shared edges: identical floats
    ye = grid.y0 + np.arange(rows + 1) * grid.step_y
    out: dict[int, Any] = {}
    for label in np.unique(data):
        if label == 0:
            continue
        mask = np.pad(data == label, [(0, 0), (1, 1)]).astype(np.int8)
        d = np.diff(mask, axis=1)
        r_start, c_start = np.nonzero(d == 1)
        r_end, c_end = np.nonzero(d == -1)  # same row order, so runs pair up
        boxes = shapely.box(xe[c_start], ye[r_start], xe[c_end], ye[r_end + 1])
        geom = shapely.union_all(boxes)
        geom = shapely.set_precision(geom, PRECISION)
        geom = shapely.orient_polygons(shapely.simplify(geom, 0))
        out[int(label)] = geom
    return out


def _polygons(geom: Any) -> list[Any]:
    return [g for g in getattr(geom, "geoms", [geom]) if not g.is_empty]


def labels_to_geojson(m: SlideMap, split: str = "class") -> dict[str, Any]:
    """The FeatureCollection of a label map (see the module docstring)."""
    if split not in SPLITS:
        raise WriterError(f"split must be one of {SPLITS}, not {split!r}")
    if not m.metadata.get("slide_mpp"):
        raise WriterError(f"{m.name}: no slide µm/px in the map's metadata (GeoJSON needs the slide's)")
    grid = map_grid(m)
    classes = m.classes
    colors = m.colors
    cell_area = grid.step_x * grid.step_y
    features = []
    slide = str(m.metadata.get("slide_path") or m.metadata.get("slide_name") or "")
    for label, geom in label_polygons(m).items():
        name = classes[label - 1] if 0 < label <= len(classes) else f"label {label}"
        color = colors[label - 1] if 0 < label <= len(colors) else label_colors(label)[-1]
        polys = _polygons(geom)
        parts = [MultiPolygon(polys)] if split == "class" else polys
        for i, part in enumerate(parts):
            features.append({
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari-xmag:{slide}:{m.name}:{label}:{i}")),
                "geometry": mapping(part),
                "properties": {
                    "objectType": "annotation",
                    "name": name,
                    "classification": {"name": name, "color": [int(c) for c in color]},
                    "isLocked": False,
                    "xmag_label": int(label),
                    "xmag_cells": round(float(shapely.area(part)) / cell_area, 3),
                },
            })
    return {
        "type": "FeatureCollection",
        "xmag": {
            "format": GEOJSON_FORMAT,
            "format_version": GEOJSON_VERSION,
            "coordinates": "level-0 pixels, x right, y down (QuPath)",
            "name": m.name,
            "kind": m.kind,
            "slide_path": str(m.metadata.get("slide_path") or ""),
            "slide_mpp": float(m.metadata["slide_mpp"]),
            "cell_area_level0": cell_area,
            "split": split,
            "metadata": json.loads(json.dumps(m.metadata, allow_nan=False, default=str)),
        },
        "features": features,
    }


def write_geojson(
    path: str | os.PathLike[str], m: SlideMap, split: str = "class", *, overwrite: bool = False
) -> Path:
    """Write a label map's polygons as GeoJSON, atomically; what is at ``path`` is replaced only
    when it is a GeoJSON map of ours, or with ``overwrite``."""
    return write_json(path, labels_to_geojson(m, split), GEOJSON_KIND, overwrite=overwrite, indent=None)


# ---- read -----------------------------------------------------------------------------------
@dataclass
class Annotations:
    """A GeoJSON written by :func:`write_geojson`: shapely geometries in level-0 px, per feature."""

    geometries: list[Any]
    classes: list[str]
    colors: list[list[int]]
    labels: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def slide_mpp(self) -> float:
        return float(self.info["slide_mpp"])


def _load(path: Path) -> dict[str, Any]:
    problem = file_problem(path, max_bytes=MAX_GEOJSON_BYTES) or too_big(8 * path.stat().st_size)
    if problem:
        raise ValueError(problem)
    return json.loads(path.read_text(encoding="utf-8"))


def is_map_geojson(path: str | os.PathLike[str]) -> bool:
    """True for a GeoJSON written by :func:`write_geojson`; False (never an error) otherwise."""
    try:
        p = Path(path)
        if file_problem(p) is not None or p.suffix.lower() not in (".geojson", ".json"):
            return False
        with p.open("rb") as fh:
            if b"napari-xmag-geojson" not in fh.read(1 << 16):  # our member comes first
                return False
        data = _load(p)
        info = data.get("xmag") if isinstance(data, dict) else None
        return isinstance(info, dict) and info.get("format") == GEOJSON_FORMAT and bool(info.get("slide_mpp"))
    except (OSError, ValueError):
        return False


def _feature_list(data: Any) -> list[Any] | None:
    """The features of a GeoJSON document: a FeatureCollection, one Feature, or a list of them
    (QuPath before 0.4 exported a bare list); None for anything else."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    if data.get("type") == "FeatureCollection" and isinstance(data.get("features"), list):
        return data["features"]
    if data.get("type") == "Feature":
        return [data]
    return None


def is_annotation_geojson(path: str | os.PathLike[str]) -> bool:
    """True for a GeoJSON of polygons in level-0 pixels that is not ours: QuPath's annotation
    exports (*File > Export objects as GeoJSON*). False, never an error, otherwise."""
    try:
        p = Path(path)
        if file_problem(p) is not None or p.suffix.lower() not in (".geojson", ".json") or is_map_geojson(p):
            return False
        features = _feature_list(_load(p)) or []
        return any(
            isinstance(f, dict) and isinstance(f.get("geometry"), dict)
            and f["geometry"].get("type") in ("Polygon", "MultiPolygon") for f in features
        )
    except (OSError, ValueError):
        return False


#: What ``write_geojson`` may replace: a GeoJSON map of ours.
GEOJSON_KIND = OutputKind("GeoJSON map", is_map_geojson)


def _color(value: Any) -> list[int]:
    """An RGB triple in 0..255 from a QuPath colour (a list of numbers); yellow otherwise."""
    if isinstance(value, list) and len(value) >= 3 and all(_number(c) for c in value[:3]):
        return [min(255, max(0, int(c))) for c in value[:3]]
    return [255, 255, 0]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_geojson(path: str | os.PathLike[str], slide_mpp: float | None = None) -> Annotations:
    """The polygons of a GeoJSON: ours (:func:`write_geojson`, which records the slide's µm/px),
    or another tool's in level-0 pixels, QuPath's in particular, given the slide's ``slide_mpp``.

    A feature's class is its ``properties.classification.name`` (QuPath), else its
    ``properties.name``; features that are not (Multi)Polygons (points, lines) are skipped and
    counted in ``info["skipped"]``. Raises :class:`MapFileError` naming the file otherwise:
    not JSON, no polygon, no µm/px. Malformed optional members (a colour, a label) get defaults.
    """
    p = Path(path)
    ours = is_map_geojson(p)
    if not ours and not is_annotation_geojson(p):
        raise MapFileError(f"{p}: not a GeoJSON of polygons (a napari-xmag map or QuPath annotations)")
    try:
        data = _load(p)
        if ours:
            info = dict(data["xmag"])
            info["slide_mpp"] = mpp = positive_float(info.get("slide_mpp"))
            if mpp is None:
                given = data["xmag"]["slide_mpp"]
                raise MapFileError(f"{p}: the slide µm/px ({given!r}) is not a positive number")
            info["cell_area_level0"] = positive_float(info.get("cell_area_level0"))
        else:
            mpp = positive_float(slide_mpp)
            if mpp is None:
                raise MapFileError(f"{p}: its polygons are in the slide's level-0 pixels: open the slide"
                                   " first (its µm/px places them)")
            info = {"slide_mpp": mpp, "source": "annotations", "name": p.stem}
        if not isinstance(info.get("metadata"), dict):
            info["metadata"] = {}
        features = _feature_list(data)
        if features is None:
            raise MapFileError(f"{p}: 'features' is not a list of GeoJSON features")
        geoms, classes, colors, labels = [], [], [], []
        skipped = 0
        for i, feat in enumerate(features):
            if not isinstance(feat, dict):
                raise MapFileError(f"{p}: feature {i} is not a GeoJSON Feature object")
            props = feat["properties"] if isinstance(feat.get("properties"), dict) else {}
            cls = props["classification"] if isinstance(props.get("classification"), dict) else {}
            geom = shape(feat["geometry"])
            if geom.geom_type not in ("Polygon", "MultiPolygon"):
                if ours:
                    raise MapFileError(f"{p}: feature {i} is a {geom.geom_type}, not a (Multi)Polygon")
                skipped += 1
                continue
            geoms.append(geom)
            classes.append(str(cls.get("name") or props.get("name") or ""))
            colors.append(_color(cls.get("color")))
            label = props.get("xmag_label", 0)
            labels.append(int(label) if _number(label) else 0)
        info["skipped"] = skipped
    except MapFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ShapelyError) as err:
        raise MapFileError(f"{p}: not a readable GeoJSON ({type(err).__name__}: {err})") from None
    return Annotations(geoms, classes, colors, labels, info)


def _ring(coords: Any) -> np.ndarray:
    a = np.asarray(coords, np.float64)[:, :2]
    return a[:-1] if len(a) > 1 and np.array_equal(a[0], a[-1]) else a


def polygon_vertices(poly: Any) -> np.ndarray:
    """One polygon as a single vertex ring (level-0 x, y), holes included napari's way: after the
    exterior, each hole is walked from the exterior's first vertex and back (even-odd filling)."""
    ext = _ring(poly.exterior.coords)
    parts = [ext]
    for hole in poly.interiors:
        h = _ring(hole.coords)
        parts.append(np.vstack([ext[:1], h, h[:1]]))
    if len(parts) > 1:
        parts.append(ext[:1])
    return np.vstack(parts)


def geojson_layer_data(
    path: str | os.PathLike[str], slide_mpp: float | None = None
) -> tuple[list[np.ndarray], dict[str, Any], str]:
    """A napari Shapes layer data tuple: polygons in µm (y, x), on the slide layer of our reader
    (``slide_mpp``: that slide's, for a GeoJSON that is not ours, see :func:`read_geojson`).

    Level-0 pixel ``x`` is centred at ``x * mpp``, so a polygon vertex at level-0 position ``X``
    (a pixel edge) is drawn at ``(X - 0.5) * mpp``.
    """
    ann = read_geojson(path, slide_mpp)
    mpp = ann.slide_mpp
    shapes, classes, labels, edge, face = [], [], [], [], []
    for geom, cls, rgb, label in zip(ann.geometries, ann.classes, ann.colors, ann.labels, strict=True):
        for poly in _polygons(geom):
            xy = polygon_vertices(poly)
            shapes.append(level0_to_um(xy, mpp)[:, ::-1])  # napari draws (y, x)
            classes.append(cls)
            labels.append(label)
            color = [c / 255 for c in rgb]
            edge.append([*color, 1.0])
            face.append([*color, 0.35])
    meta = dict(ann.info.get("metadata") or {})
    meta.setdefault("slide_mpp", mpp)
    meta.setdefault("slide_path", ann.info.get("slide_path", ""))
    ours = ann.info.get("source") != "annotations"
    if ours:  # a map's cells: lines a twentieth of a cell wide
        width = float(ann.info.get("cell_area_level0") or 1.0) ** 0.5 * mpp / 20
    else:  # hand-drawn regions: lines that stay visible when the whole slide is in view
        span = max((float(np.ptp(v, axis=0).max()) for v in shapes), default=0.0)
        width = span / 300
    info = {k: v for k, v in ann.info.items() if k != "metadata"}
    kwargs: dict[str, Any] = {
        "name": str(ann.info.get("name") or Path(path).stem) if ours else f"annotations · {Path(path).stem}",
        "shape_type": "polygon",
        "edge_color": edge or "yellow",
        "face_color": face or "transparent",
        "edge_width": max(width, mpp),
        "features": {"class": classes, "label": labels},
        "units": ("um", "um"),
        # a map of ours stays a map; annotations are what the few-shot probe trains on
        "metadata": {"xmag_map": meta, "xmag_geojson": info} if ours else {"xmag_annotations": info},
    }
    return shapes, kwargs, "shapes"
