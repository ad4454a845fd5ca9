"""Maps as OME-Zarr (OME-NGFF 0.4, zarr v2 storage), written with zarr alone.

Layout of ``NAME.ome.zarr``:

* the root group is the image map when there is one (a heatmap, the PCA RGB, the probe's class
  probabilities): ``multiscales`` with axes ``y, x`` (``c, y, x`` for several channels; unit
  ``micrometer``), datasets ``0, 1, ...`` halving each time (NaN-aware mean of 2 x 2 cells), and
  per level a ``scale`` and a ``translation`` in µm that put the map on the slide;
  channel names and colours are in ``omero``;
* label maps (k-means, probe segmentation) are NGFF labels: ``labels/<kind>`` beside an image,
  each with its own ``multiscales`` (majority of 2 x 2 cells per level) and ``image-label``
  (``colors``, ``properties`` with each label's class name). A store of labels alone has no
  image: its root is the NGFF labels group itself (``{"labels": [...]}``, the label images
  ``<kind>/`` under it), which ome-zarr-py reads as such;
* ``xmag`` in each group's attributes holds the map's metadata (slide path and mpp, model,
  features file, random-weights flag, grid), so :func:`read_ome_zarr` rebuilds the same
  :class:`~napari_xmag.maps.SlideMap`.

NGFF 0.4 because it is the version ome-zarr-py (0.18) reads and writes without reservation
(it reads 0.5 but does not write it yet) and most viewers read; 0.4 means zarr format 2 with
``/``-separated chunk keys, which zarr 3 writes and reads. ome-zarr-py is not needed to write
or read our files; the tests check that it reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .._atomic import OutputKind, atomic_path, read_small_json
from .._memory import format_size
from .._values import positive_float
from ..formats import zarr as zarr_store
from .grid import MapGrid
from .slide_map import LABEL_KINDS, MAP_FORMAT, MapFileError, SlideMap, WriterError

__all__ = [
    "MAP_STORE_KIND", "MAX_MAP_CELLS", "NGFF_VERSION", "is_map_zarr", "read_ome_zarr", "write_ome_zarr",
]

NGFF_VERSION = "0.4"
CHUNK = 256
MAX_LEVELS = 5
#: A level is added while the current one is at least this many cells on its short side.
MIN_LEVEL_SIDE = 32
#: The most cells (times channels) a map read back may hold: one cell per 10 µm of a 100 mm
#: slide is 10^8; a store that declares more is damaged or made to exhaust memory.
MAX_MAP_CELLS = 1 << 27


def _slug(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name.strip())
    return keep.strip("-.") or "labels"


# ---- pyramids -------------------------------------------------------------------------------
def _half_mean(a: np.ndarray) -> np.ndarray:
    """(..., H, W) float -> (..., ceil(H/2), ceil(W/2)): mean of the finite values of each 2 x 2."""
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)]
    a = np.pad(a.astype(np.float64), pad, constant_values=np.nan)
    blocks = a.reshape(*a.shape[:-2], a.shape[-2] // 2, 2, a.shape[-1] // 2, 2)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(-3, -1))
    total = np.where(finite, blocks, 0).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _half_labels(a: np.ndarray) -> np.ndarray:
    """(H, W) labels -> majority non-zero label of each 2 x 2 (ties: first in row order)."""
    h, w = a.shape
    a = np.pad(a, [(0, h % 2), (0, w % 2)])
    cand = np.stack([a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]])
    votes = np.stack([((cand == c) & (c > 0)).sum(axis=0) for c in cand])
    best = np.argmax(votes, axis=0)
    return np.take_along_axis(cand, best[None], axis=0)[0]


def _pyramid(data: np.ndarray, labels: bool) -> list[np.ndarray]:
    levels = [data]
    while len(levels) < MAX_LEVELS and min(levels[-1].shape[-2:]) >= MIN_LEVEL_SIDE:
        prev = levels[-1]
        if labels:
            levels.append(_half_labels(prev))
        elif prev.dtype == np.uint8:
            levels.append(np.rint(np.nan_to_num(_half_mean(prev))).astype(np.uint8))
        else:
            levels.append(_half_mean(prev).astype(prev.dtype))
    return levels


# ---- metadata -------------------------------------------------------------------------------
def _axes(ndim: int) -> list[dict[str, str]]:
    yx = [{"name": "y", "type": "space", "unit": "micrometer"},
          {"name": "x", "type": "space", "unit": "micrometer"}]
    return ([{"name": "c", "type": "channel"}] if ndim == 3 else []) + yx


def _datasets(m: SlideMap, n_levels: int, ndim: int) -> list[dict[str, Any]]:
    """Level k averages 2^k x 2^k cells: its pixel j spans cells [j 2^k, (j + 1) 2^k), centred
    (2^k - 1) / 2 cells after cell j 2^k."""
    out = []
    for k in range(n_levels):
        f = 2**k
        scale = [s * f for s in m.scale]
        translate = [t + (f - 1) / 2 * s for t, s in zip(m.translate, m.scale, strict=True)]
        lead = [1.0] if ndim == 3 else []
        zero = [0.0] if ndim == 3 else []
        out.append({
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": lead + scale},
                {"type": "translation", "translation": zero + translate},
            ],
        })
    return out


def _multiscales(m: SlideMap, n_levels: int, ndim: int, labels: bool) -> list[dict[str, Any]]:
    return [{
        "version": NGFF_VERSION,
        "name": m.name,
        "axes": _axes(ndim),
        "datasets": _datasets(m, n_levels, ndim),
        "type": "majority of 2x2" if labels else "mean of 2x2 (NaN ignored)",
        "metadata": {"description": "napari-xmag map; level k averages 2^k x 2^k map cells"},
    }]


def _omero(m: SlideMap, stored: np.ndarray) -> dict[str, Any]:
    names = m.classes or [str(i) for i in range(stored.shape[0])]
    colors = m.colors or [[255, 255, 255]] * len(names)
    hi = 255.0 if stored.dtype == np.uint8 else 1.0
    return {
        "version": NGFF_VERSION,
        "name": m.name,
        "channels": [
            {
                "label": str(name),
                "color": "".join(f"{c:02X}" for c in rgb),
                "active": True,
                "window": {"min": 0.0, "max": hi, "start": 0.0, "end": hi},
            }
            for name, rgb in zip(names, colors, strict=False)
        ],
        "rdefs": {"model": "color"},
    }


def _xmag(m: SlideMap, stored_axes: str) -> dict[str, Any]:
    return {
        "format": MAP_FORMAT,
        "kind": m.kind,
        "name": m.name,
        "rgb": m.rgb,
        "axes": stored_axes,
        "scale": list(m.scale),
        "translate": list(m.translate),
        "metadata": json.loads(json.dumps(m.metadata, allow_nan=False, default=str)),
    }


def _write_levels(group: Any, levels: list[np.ndarray]) -> None:
    for k, level in enumerate(levels):
        chunks = tuple(level.shape[:-2]) + tuple(min(CHUNK, s) for s in level.shape[-2:])
        fill = np.nan if np.issubdtype(level.dtype, np.floating) else 0
        arr = group.create_array(
            str(k), shape=level.shape, dtype=level.dtype, chunks=chunks, fill_value=fill,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        arr[...] = level


# ---- write ----------------------------------------------------------------------------------
def _check(m: SlideMap) -> None:
    if not isinstance(m, SlideMap):
        raise WriterError(f"an OME-Zarr map is written from SlideMaps, not {type(m).__name__}")
    shape = m.data.shape
    if m.is_labels:
        if m.data.ndim != 2 or not np.issubdtype(m.data.dtype, np.integer):
            raise WriterError(f"{m.name}: labels must be a 2D integer array, not {m.data.dtype} {shape}")
    elif not (m.data.ndim == 2 or (m.data.ndim == 3 and (m.rgb or shape[0] <= 64))):
        raise WriterError(f"{m.name}: an image map is (H, W), (H, W, 3) RGB or (C, H, W), not {shape}")


def write_ome_zarr(
    path: str | os.PathLike[str], maps: SlideMap | Sequence[SlideMap], *, overwrite: bool = False
) -> Path:
    """Write at most one image map and any number of label maps into one OME-Zarr, atomically.

    What is at ``path`` is replaced only when it is a map store of ours, or with ``overwrite``."""
    maps = [maps] if isinstance(maps, SlideMap) else list(maps)
    for m in maps:
        _check(m)
    images = [m for m in maps if not m.is_labels]
    labels = [m for m in maps if m.is_labels]
    if len(images) > 1:
        raise WriterError(f"one OME-Zarr holds one image map, got {len(images)}: write them separately")
    if not maps:
        raise WriterError("nothing to write: no maps")

    with atomic_path(path, MAP_STORE_KIND, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        contents = []
        attrs: dict[str, Any] = {}
        if images:
            m = images[0]
            stored = np.moveaxis(m.data, -1, 0) if m.rgb else m.data
            levels = _pyramid(stored, labels=False)
            _write_levels(root, levels)
            attrs["multiscales"] = _multiscales(m, len(levels), stored.ndim, labels=False)
            if stored.ndim == 3:
                attrs["omero"] = _omero(m, stored)
            attrs["xmag"] = _xmag(m, "cyx" if stored.ndim == 3 else "yx")
            contents.append("")
        names: list[str] = []
        if labels:
            # Beside an image, labels go in the NGFF "labels" group; alone, the root is that group.
            lgroup = root.create_group("labels") if images else root
            prefix = "labels/" if images else ""
            for m in labels:
                name = _slug(m.kind)
                while name in names:
                    name += "_"
                names.append(name)
                g = lgroup.create_group(name)
                levels = _pyramid(m.data, labels=True)
                _write_levels(g, levels)
                colors = m.colors
                g.attrs.update({
                    "multiscales": _multiscales(m, len(levels), 2, labels=True),
                    "image-label": {
                        "version": NGFF_VERSION,
                        "colors": [
                            {"label-value": i, "rgba": [*rgb, 255]} for i, rgb in enumerate(colors, 1)
                        ],
                        "properties": [{"label-value": i, "class": c} for i, c in enumerate(m.classes, 1)],
                        **({"source": {"image": "../../"}} if images else {}),
                    },
                    "xmag": _xmag(m, "yx"),
                })
                contents.append(prefix + name)
            if images:
                lgroup.attrs.update({"labels": names})
            else:
                attrs["labels"] = names
        attrs.setdefault("xmag", {"format": MAP_FORMAT})
        attrs["xmag"]["contents"] = contents
        root.attrs.update(attrs)
    return Path(path)


# ---- read -----------------------------------------------------------------------------------
def _root_attrs(path: Path) -> dict[str, Any] | None:
    """The root group's attributes, read as JSON without zarr (v2 ``.zattrs`` or v3 ``zarr.json``)."""
    for name, inner in ((".zattrs", None), ("zarr.json", "attributes")):
        data = read_small_json(path / name)
        if data is not None:
            data = data.get(inner, {}) if inner and isinstance(data, dict) else data
            return data.get("ome", data) if isinstance(data, dict) else None
    return None


def is_map_zarr(path: str | os.PathLike[str]) -> bool:
    """True for a folder written by :func:`write_ome_zarr`; False (never an error) otherwise."""
    try:
        p = Path(path)
        if not p.is_dir():
            return False
        attrs = _root_attrs(p)
        info = attrs.get("xmag") if isinstance(attrs, dict) else None
        return isinstance(info, dict) and info.get("format") == MAP_FORMAT
    except (OSError, ValueError):
        return False


#: What ``write_ome_zarr`` may replace: a map store of ours.
MAP_STORE_KIND = OutputKind("map store (OME-Zarr)", is_map_zarr)


#: What zarr raises for damaged metadata or chunks: all of it is "not a readable store".
_READ_ERRORS = (OSError, KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError)


def _pair(value: Any, what: str, positive: bool = False) -> tuple[float, float]:
    """Two finite floats (y, x) from a stored list, else ValueError saying what is wrong."""
    if not isinstance(value, list) or len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"its {what} is {value!r}, not two numbers")
    a, b = float(value[0]), float(value[1])
    if not (np.isfinite(a) and np.isfinite(b)) or (positive and min(a, b) <= 0):
        raise ValueError(f"its {what} is {value!r}, not two {'positive ' if positive else ''}finite numbers")
    return a, b


def _clean_metadata(meta: Any, channels: int | None) -> dict[str, Any]:
    """The map's metadata with class names and colours usable by napari (others dropped)."""
    meta = dict(meta) if isinstance(meta, dict) else {}
    classes = meta.get("classes")
    if not (isinstance(classes, list) and (channels is None or len(classes) == channels)):
        meta.pop("classes", None)
    else:
        meta["classes"] = [str(c) for c in classes]
    colors = meta.get("colors")
    ok = isinstance(colors, list) and all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and 0 <= v <= 255 for v in c)
        for c in colors
    )
    if not ok or (channels is not None and len(colors) < channels):
        meta.pop("colors", None)
    return meta


def _map_from_group(group: Any, path: Path, sub: str) -> SlideMap:

    where = f"{path}: map {sub!r}" if sub else f"{path}: the root map"
    info = group.attrs.get("xmag")
    if not isinstance(info, dict):
        raise MapFileError(f"{where} has no xmag map metadata")
    if "0" not in group or not isinstance(group["0"], zarr.Array):
        raise MapFileError(f"{where} has no level 0 array")
    level0 = group["0"]
    cells = int(np.prod(level0.shape, dtype=np.float64))
    if cells > MAX_MAP_CELLS:
        raise MapFileError(
            f"{where}: level 0 declares {tuple(level0.shape)} cells"
            f" ({format_size(cells * level0.dtype.itemsize)}), more than a map of any slide holds"
            f" ({MAX_MAP_CELLS:,} cells): the store is damaged"
        )

    data = zarr_store.read(group, "0", path, MapFileError, factor=4.0)  # RGBA and colour copies
    kind = str(info.get("kind") or ("labels" if "image-label" in group.attrs else "heatmap"))
    rgb = bool(info.get("rgb"))
    if data.dtype.kind not in "biuf" or data.size == 0:
        raise MapFileError(f"{where}: level 0 is an empty or non-numeric {data.dtype} {data.shape} array")
    if kind in LABEL_KINDS:
        if data.ndim != 2 or data.dtype.kind not in "iu":
            raise MapFileError(f"{where}: a label map is 2D integers, not {data.dtype} {data.shape}")
    elif rgb:
        if data.ndim != 3 or data.shape[0] not in (3, 4):
            raise MapFileError(f"{where}: an RGB map is (3, H, W), not {data.shape}")
        data = np.moveaxis(data, 0, -1)
    elif data.ndim not in (2, 3):
        raise MapFileError(f"{where}: an image map is (H, W) or (C, H, W), not {data.shape}")
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    channels = data.shape[0] if data.ndim == 3 and not rgb else None
    meta = _clean_metadata(info.get("metadata"), channels)
    try:
        scale = _pair(info.get("scale"), "scale", positive=True)
        translate = _pair(info.get("translate"), "translate")
    except ValueError as err:
        raise MapFileError(f"{where}: {err}") from None
    grid = None
    if meta.get("grid"):
        try:
            grid = MapGrid.from_dict(meta["grid"])
        except (KeyError, TypeError, ValueError, AttributeError):
            grid = None
    spatial = tuple(data.shape[:2] if rgb else data.shape[-2:])
    if grid is not None and grid.shape != spatial:
        raise MapFileError(f"{where}: level 0 is {spatial} cells but its grid is {grid.shape}: damaged")
    mpp = positive_float(meta.get("slide_mpp")) if isinstance(meta.get("slide_mpp"), (int, float)) else None
    if mpp is None:
        meta.pop("slide_mpp", None)
    if grid is None and mpp is not None:
        grid = MapGrid.from_transform(scale, translate, float(mpp), spatial)
    name = str(info.get("name") or path.stem)
    return SlideMap(data=data, scale=scale, translate=translate, kind=kind, name=name, metadata=meta,
                    grid=grid)


def read_ome_zarr(path: str | os.PathLike[str]) -> list[SlideMap]:
    """The maps of a store written by :func:`write_ome_zarr`: the image first, then the labels.

    Raises :class:`MapFileError` naming the store when it is not one
    or is damaged (metadata, chunks, shapes or kinds that do not fit a map).
    """
    p = Path(path)
    if not is_map_zarr(p):
        raise MapFileError(f"{p}: not a napari-xmag map store (no xmag map metadata)")


    try:
        root = zarr_store.open_group(p, MapFileError, "napari-xmag map store")
        contents = root.attrs["xmag"].get("contents")
        if not (isinstance(contents, list) and contents and all(isinstance(c, str) for c in contents)):
            raise MapFileError(f"{p}: its list of maps (xmag contents) is missing or damaged")
        maps = []
        for sub in contents:
            group = root if sub == "" else root[sub]
            if not isinstance(group, zarr.Group):
                raise MapFileError(f"{p}: map {sub!r} is not a group")
            maps.append(_map_from_group(group, p, sub))
    except MapFileError:
        raise
    except _READ_ERRORS as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise MapFileError(
            f"{p}: not a readable napari-xmag map store ({type(err).__name__}: {cause})"
        ) from None
    return maps
