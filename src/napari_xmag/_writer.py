"""napari writers (npe2): thin shims over :mod:`napari_xmag.writers`.

A layer the writers cannot take (not a map, no slide reference) is refused with a warning that
says why, and no path is returned: napari then reports "did not return any written paths"
beside our message (in the save dialog, both end up in the error it shows). Raising instead
would lose the message: napari turns a writer's ValueError into "no writer found".
"""

from __future__ import annotations

import warnings
from typing import Any

from .writers import (
    WriterError,
    map_from_layer,
    write_geojson,
    write_layer_features,
    write_ome_zarr,
)


class XmagWriterWarning(UserWarning):
    """A napari-xmag writer refused a layer; the message says why."""


def _refuse(err: Exception) -> list[str]:
    warnings.warn(f"napari-xmag: {err}", XmagWriterWarning, stacklevel=3)
    return []


def write_image_zarr(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """An image map (heatmap, PCA RGB, class probability) -> OME-Zarr."""
    try:
        return [str(write_ome_zarr(path, map_from_layer(data, attributes, "image")))]
    except WriterError as err:
        return _refuse(err)


def write_labels_zarr(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A label map (k-means, probe classes) -> OME-Zarr labels."""
    try:
        return [str(write_ome_zarr(path, map_from_layer(data, attributes, "labels")))]
    except WriterError as err:
        return _refuse(err)


def write_labels_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A label map -> QuPath GeoJSON in level-0 pixels."""
    try:
        return [str(write_geojson(path, map_from_layer(data, attributes, "labels")))]
    except WriterError as err:
        return _refuse(err)


def write_features_h5(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """The patch features a map layer carries (or was made from) -> TRIDENT h5."""
    try:
        return [str(write_layer_features(path, attributes, str(attributes.get("name") or "layer")))]
    except WriterError as err:
        return _refuse(err)
