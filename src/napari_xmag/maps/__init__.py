"""Maps: per-patch values (PCA, k-means, probe, attention) -> arrays aligned to the slide, and
their files.

``grid`` (where map cells lie, rasters), ``slide_map`` (the :class:`SlideMap` and how napari
draws it), ``kinds`` (PCA, k-means, probe, attention, tissue maps from a features file, cached),
``probes`` (linear probes without pickle), ``ome_zarr`` and ``geojson`` (the map files, with
their readers) and ``files`` (a map file by its name). No napari, Qt or torch.
"""

from .files import is_annotation_geojson, is_map_file, map_layers, save_maps
from .geojson import (
    GEOJSON_KIND,
    geojson_layer_data,
    is_map_geojson,
    labels_to_geojson,
    read_geojson,
    write_geojson,
)
from .grid import MapError, MapGrid, build_grid, grid_for_features, rasterize_labels, rasterize_mean
from .kinds import (
    attention_map,
    cache_info,
    clear_cache,
    kmeans_labels,
    kmeans_map,
    make_maps,
    pca_map,
    probe_maps,
    tissue_map,
)
from .ome_zarr import MAP_STORE_KIND, is_map_zarr, read_ome_zarr, write_ome_zarr
from .probes import (
    PROBE_FORMAT,
    LinearProbe,
    ProbeFileError,
    fit_linear_probe,
    is_probe_file,
    load_probe,
    save_probe,
)
from .slide_map import (
    KINDS,
    LABEL_KINDS,
    MAP_FORMAT,
    MAP_FORMAT_VERSION,
    PALETTE,
    MapFileError,
    SlideMap,
    WriterError,
    class_features,
    cluster_names,
    label_colormap,
    label_colors,
)

__all__ = [
    "GEOJSON_KIND",
    "KINDS",
    "LABEL_KINDS",
    "MAP_FORMAT",
    "MAP_FORMAT_VERSION",
    "MAP_STORE_KIND",
    "PALETTE",
    "PROBE_FORMAT",
    "LinearProbe",
    "MapError",
    "MapFileError",
    "MapGrid",
    "ProbeFileError",
    "SlideMap",
    "WriterError",
    "attention_map",
    "build_grid",
    "cache_info",
    "class_features",
    "clear_cache",
    "cluster_names",
    "fit_linear_probe",
    "geojson_layer_data",
    "grid_for_features",
    "is_annotation_geojson",
    "is_map_file",
    "is_map_geojson",
    "is_map_zarr",
    "is_probe_file",
    "kmeans_labels",
    "kmeans_map",
    "label_colormap",
    "label_colors",
    "labels_to_geojson",
    "load_probe",
    "make_maps",
    "map_layers",
    "pca_map",
    "probe_maps",
    "rasterize_labels",
    "rasterize_mean",
    "read_geojson",
    "read_ome_zarr",
    "save_maps",
    "save_probe",
    "tissue_map",
    "write_geojson",
    "write_ome_zarr",
]
