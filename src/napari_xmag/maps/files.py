"""Map files by their name: ``*.geojson`` for a label map, anything else OME-Zarr.

:func:`save_maps` writes; :func:`is_map_file` and :func:`map_layers` are what the napari map
reader (a thin shim) calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .geojson import geojson_layer_data, is_annotation_geojson, is_map_geojson, write_geojson
from .ome_zarr import is_map_zarr, read_ome_zarr, write_ome_zarr
from .slide_map import SlideMap, WriterError

__all__ = ["is_annotation_geojson", "is_map_file", "map_layers", "save_maps"]


def save_maps(
    path: str | os.PathLike[str], maps: Sequence[SlideMap], split: str = "class", *, overwrite: bool = False
) -> Path:
    """Write maps by the file's name: ``*.geojson`` takes the label map (k-means, probe classes),
    anything else is an OME-Zarr holding them all (at most one image map)."""
    maps = list(maps)
    if str(path).lower().endswith(".geojson"):
        labels = [m for m in maps if m.is_labels]
        if len(labels) != 1:
            kinds = ", ".join(m.kind for m in maps) or "none"
            raise WriterError(
                f"{path}: GeoJSON holds one label map (kmeans, probe classes); these maps are {kinds}:"
                " write them as .ome.zarr"
            )
        return write_geojson(path, labels[0], split, overwrite=overwrite)
    return write_ome_zarr(path, maps, overwrite=overwrite)


def is_map_file(path: str | os.PathLike[str]) -> bool:
    """True for an OME-Zarr map store or a GeoJSON written by napari-xmag; never raises."""
    return is_map_zarr(path) or is_map_geojson(path)


def map_layers(
    path: str | os.PathLike[str], slide_mpp: float | None = None
) -> list[tuple[Any, dict[str, Any], str]]:
    """Napari layer data tuples of a map file (or of QuPath annotations, placed with the slide's
    ``slide_mpp``), with the scale/translate (µm) that put them on the slide."""
    if is_map_zarr(path):
        return [m.layer_data() for m in read_ome_zarr(path)]
    return [geojson_layer_data(path, slide_mpp)]
