"""napari writers (npe2): thin shims over :mod:`napari_xmag.writers`.

A layer the writers cannot take (not a map, no slide reference) is refused with a warning that
says why, and no path is returned: napari then reports "did not return any written paths"
beside our message (in the save dialog, both end up in the error it shows). Raising instead
would lose the message: napari turns a writer's ValueError into "no writer found".

Something at the chosen path that napari-xmag did not write (a folder of the user's, a slide)
is replaced only after the user confirms it in a dialog.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ._atomic import OutputExistsError
from ._widgets import _common
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
