"""napari writers (npe2): thin shims over the map files (:mod:`napari_xmag.maps`) and the
feature files (:mod:`napari_xmag.features`).

:func:`map_from_layer` turns a napari layer data tuple ``(data, attributes)`` back into a
:class:`~napari_xmag.maps.SlideMap`, or refuses it with a :class:`WriterError` that says why.

A layer the writers cannot take (not a map, no slide reference) is refused with a warning that
says why, and no path is returned: napari then reports "did not return any written paths"
beside our message (in the save dialog, both end up in the error it shows). Raising instead
would lose the message: napari turns a writer's ValueError into "no writer found".

Something at the chosen path that napari-xmag did not write (a folder of the user's, a slide)
is replaced only after the user confirms it in a dialog.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import OutputExistsError
from ._widgets import _common
from .features import FeatureSet, read_features, write_features
from .maps import LABEL_KINDS, MapGrid, SlideMap, WriterError, label_colors, write_geojson, write_ome_zarr

LAYER_META_KEY = "xmag_map"
FEATURES_META_KEY = "xmag_features"


def _level0(data: Any) -> np.ndarray:
    """Level 0 of a layer's data (a multiscale list, a dask array or an array), in memory."""
    if isinstance(data, (list, tuple)):
        if not data:
            raise WriterError("the layer has no data")
        data = data[0]
    return np.asarray(data)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _slide_reference(attributes: Mapping[str, Any], name: str) -> dict[str, Any]:
    meta = (attributes.get("metadata") or {}).get(LAYER_META_KEY)
    if not isinstance(meta, Mapping):
        raise WriterError(
            f"layer {name!r} has no slide reference (metadata['{LAYER_META_KEY}'] with slide_path and"
            " slide_mpp): only maps made by napari-xmag, or reopened from its files, can be saved aligned"
            " with their slide"
        )
    mpp = meta.get("slide_mpp")
    try:
        ok = float(mpp) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WriterError(f"layer {name!r}: its slide reference has no slide µm/px (slide_mpp = {mpp!r})")
    if not (meta.get("slide_path") or meta.get("slide_name")):
        raise WriterError(f"layer {name!r}: its slide reference names no slide (slide_path)")
    return dict(meta)


def map_from_layer(data: Any, attributes: Mapping[str, Any], layer_type: str) -> SlideMap:
    """A SlideMap from a napari layer data tuple, or a :class:`WriterError` saying why not."""
    name = str(attributes.get("name") or "layer")
    if layer_type not in ("image", "labels"):
        raise WriterError(f"layer {name!r} is a {layer_type} layer; maps are image or labels layers")
    meta = _slide_reference(attributes, name)
    arr = _level0(data)
    rgb = bool(attributes.get("rgb")) and layer_type == "image"
    spatial = arr.shape[:2] if rgb else arr.shape[-2:]
    ndim_ok = (arr.ndim == 3 and rgb) or arr.ndim == 2 or (arr.ndim == 3 and layer_type == "image")
    if not ndim_ok or min(spatial, default=0) < 1:
        raise WriterError(f"layer {name!r}: a map is 2D (or RGB / channels x 2D), not {arr.shape}")
    scale = [float(s) for s in _or(attributes.get("scale"), (1.0, 1.0))][-2:]
    translate = [float(t) for t in _or(attributes.get("translate"), (0.0, 0.0))][-2:]
    kind = str(meta.get("kind") or "")
    if layer_type == "labels":
        if not np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.int64)
        if arr.min(initial=0) < 0:
            raise WriterError(f"layer {name!r}: negative labels cannot be written")
        if kind not in LABEL_KINDS:
            kind = "labels"
        meta = _labels_colors(meta, attributes, arr)
    else:
        if kind in LABEL_KINDS or (kind == "pca" and not rgb):
            kind = "heatmap"
        if kind == "probe" and arr.ndim == 2:  # one class of a probe map, split by napari
            kind = "heatmap"
            meta["classes"] = [c for c in meta.get("classes") or [] if name.endswith(str(c))][:1]
            meta["colors"] = []
        if rgb and kind != "pca":
            kind = "pca"
        if rgb and arr.shape[-1] == 4:  # our layers are RGBA, transparent where no patch
            empty = arr[..., 3] == 0
            arr = arr[..., :3].copy()
            if np.issubdtype(arr.dtype, np.floating):
                arr[empty] = np.nan
            else:
                arr[empty] = 0
        if not rgb and not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
    grid = MapGrid.from_transform(scale, translate, float(meta["slide_mpp"]), spatial)
    meta["kind"] = kind
    return SlideMap(data=arr, scale=(scale[0], scale[1]), translate=(translate[0], translate[1]), kind=kind,
                    name=name, metadata=meta, grid=grid)


def _labels_colors(meta: dict[str, Any], attributes: Mapping[str, Any], arr: np.ndarray) -> dict[str, Any]:
    """Class names and colours for every label present (painted ones too), from the metadata or
    the layer's direct colormap."""
    top = int(arr.max(initial=0))
    classes = list(meta.get("classes") or [])
    colors = [list(c) for c in meta.get("colors") or []]
    cmap = attributes.get("colormap")
    color_dict = getattr(cmap, "color_dict", None)
    if isinstance(cmap, Mapping):
        color_dict = cmap
    for label in range(len(colors) + 1, top + 1):
        rgba = color_dict.get(label) if color_dict else None
        if rgba is not None and len(rgba) >= 3:
            colors.append([round(float(c) * 255) for c in list(rgba)[:3]])
        else:
            colors.append(label_colors(label)[-1])
    classes += [f"label {i}" for i in range(len(classes) + 1, top + 1)]
    return {**meta, "classes": classes, "colors": colors}


def write_layer_features(
    path: str | os.PathLike[str], attributes: Mapping[str, Any], name: str = "layer", *,
    overwrite: bool = False,
) -> Path:
    """Write the features a layer carries as a TRIDENT h5: a FeatureSet (or a dict with
    ``coords``, ``features``, ``attrs``, ``coords_attrs``) in ``metadata['xmag_features']``, or
    the features file a map was made from (``metadata['xmag_map']['features_path']``)."""
    metadata = attributes.get("metadata") or {}
    carried = metadata.get(FEATURES_META_KEY)
    if isinstance(carried, FeatureSet):
        data = carried
    elif isinstance(carried, Mapping) and "coords" in carried and "features" in carried:
        data = FeatureSet(
            coords=np.asarray(carried["coords"]), features=np.asarray(carried["features"]),
            attrs=dict(carried.get("attrs") or {}), coords_attrs=dict(carried.get("coords_attrs") or {}),
        )
    else:
        source = (metadata.get(LAYER_META_KEY) or {}).get("features_path")
        if not source:
            raise WriterError(
                f"layer {name!r} carries no patch features (metadata['{FEATURES_META_KEY}'], or a map made"
                " from a features file); nothing to write as .h5"
            )
        if not Path(source).exists():
            raise WriterError(f"layer {name!r}: its features file {source} no longer exists")
        data = read_features(source)
    if Path(path).suffix.lower() != ".h5":
        raise WriterError(f"{path}: features are written as TRIDENT .h5")
    return write_features(path, data, overwrite=overwrite)


class XmagWriterWarning(UserWarning):
    """A napari-xmag writer refused a layer; the message says why."""


def _refuse(err: Exception) -> list[str]:
    warnings.warn(f"napari-xmag: {err}", XmagWriterWarning, stacklevel=3)
    return []


def _write(path: str, write: Callable[[bool], Any]) -> list[str]:
    """``write(overwrite)``; a foreign target is replaced only once the user says so."""
    try:
        try:
            return [str(write(False))]
        except OutputExistsError as err:
            if not _common.confirm_replace(path, str(err).split(";")[0]):
                return _refuse(err)
            return [str(write(True))]
    except (WriterError, OSError) as err:
        return _refuse(err)


def write_image_zarr(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """An image map (heatmap, PCA RGB, class probability) -> OME-Zarr."""
    return _write(path, lambda overwrite: write_ome_zarr(
        path, map_from_layer(data, attributes, "image"), overwrite=overwrite))


def write_labels_zarr(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A label map (k-means, probe classes) -> OME-Zarr labels."""
    return _write(path, lambda overwrite: write_ome_zarr(
        path, map_from_layer(data, attributes, "labels"), overwrite=overwrite))


def write_labels_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A label map -> QuPath GeoJSON in level-0 pixels."""
    return _write(path, lambda overwrite: write_geojson(
        path, map_from_layer(data, attributes, "labels"), overwrite=overwrite))


def write_features_h5(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """The patch features a map layer carries (or was made from) -> TRIDENT h5."""
    name = str(attributes.get("name") or "layer")
    return _write(path, lambda overwrite: write_layer_features(path, attributes, name, overwrite=overwrite))
