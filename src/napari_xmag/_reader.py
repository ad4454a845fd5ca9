"""napari readers: thin shims over :class:`napari_xmag.slide.Slide` (slides) and
:mod:`napari_xmag.maps` (our map files; QuPath annotations, placed on the open slide)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openslide

from ._paths import file_problem
from .maps import MapFileError, is_annotation_geojson, is_map_file, map_layers
from .slide import MissingMppWarning, Slide
from .slide_checks import damage_reason, not_brightfield_reason
from .slide_list import SLIDE_SUFFIXES

#: Suffixes only slides have: such a file, empty or truncated, is claimed so that the user
#: reads why it cannot open (a damaged .tif is left to other readers).
SLIDE_ONLY_SUFFIXES = (".svs", ".ndpi", ".scn", ".svslide", ".bif")

LayerData = list[tuple[Any, dict[str, Any], str]]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """Return :func:`read_slides` if OpenSlide recognises the file(s), else None. Never raises.

    A grayscale or multi-channel (fluorescence) TIFF, which OpenSlide would open as false RGB,
    is left to other readers (napari's own reads it as it is). An empty or truncated file with a
    suffix only slides have (``.svs``, ``.ndpi``, ...) is claimed, so that reading it says why
    it cannot be opened instead of napari finding no reader.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        return None
    try:
        for p in paths:
            suffix = Path(p).suffix.lower()
            if suffix not in SLIDE_SUFFIXES:
                return None
            problem = file_problem(p)
            if problem is not None:  # a pipe would block OpenSlide (and napari) forever
                if suffix in SLIDE_ONLY_SUFFIXES and problem.startswith("is a ") and "folder" not in problem:
                    continue  # a pipe or device with a slide's name: claimed, so reading it says what it is
                return None
            if openslide.OpenSlide.detect_format(p) is None:
                if suffix in SLIDE_ONLY_SUFFIXES and Path(p).is_file() and damage_reason(p):
                    continue
                return None
            if not_brightfield_reason(p) is not None:
                return None
    except Exception:  # probing must never break napari's reader search
        return None
    return read_slides


def read_slides(path: str | list[str]) -> LayerData:
    paths = [path] if isinstance(path, str) else list(path)
    return [slide_layer_data(p) for p in paths]


def slide_layer_data(path: str, mpp: float | None = None) -> tuple[Any, dict[str, Any], str]:
    """One multiscale RGB image layer, in µm when the slide knows its mpp."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingMppWarning)
        slide = Slide(path, mpp=mpp)
    for w in caught:  # a notification in napari; the warning for scripts and logs
        warnings.warn(str(w.message), w.category, stacklevel=2)
        _notify(str(w.message))
    try:
        slide.check_readable()  # a corrupt file fails here once, not in every tile later
    except Exception:
        slide.close()
        raise
    kwargs: dict[str, Any] = {
        "rgb": True,
        "multiscale": True,
        "name": slide.name,
        "metadata": {"xmag": slide.summary(), "properties": slide.properties},
        "contrast_limits": (0, 255),
        # The store keeps decoded tiles in its own bounded cache (XMAG_TILE_CACHE_MB); napari's
        # dask cache (a quarter of RAM by default) would hold every view again, and grow with
        # every pan: 370 MB after 30 half-screen pans of a 40k slide.
        "cache": False,
    }
    if slide.mpp_x is not None:
        kwargs["scale"] = (slide.mpp_y, slide.mpp_x)
        kwargs["units"] = ("um", "um")
    return slide.pyramid, kwargs, "image"


# ---- our own files: maps as OME-Zarr, label maps as GeoJSON --------------------------------
def get_map_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """Return :func:`read_maps` for OME-Zarr maps and GeoJSON written by napari-xmag, and for
    GeoJSON polygons in level-0 pixels (QuPath's annotation exports), else None.

    A features store (``<slide>.zarr``, zarr v3 with ``coords``/``features``), another tool's
    OME-Zarr or a GeoJSON without polygons is left to other readers. Never raises.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        return None
    try:
        for p in paths:
            name = str(p).rstrip("/\\")
            if not (is_map_file(name) or is_annotation_geojson(name)):
                return None
    except Exception:  # probing must never break napari's reader search
        return None
    return read_maps


def read_maps(path: str | list[str]) -> LayerData:
    """Layers of our map files, with the scale/translate (µm) that put them on the slide; QuPath
    annotations go on the slide layer in view (its µm/px and position)."""
    layers: LayerData = []
    for p in [path] if isinstance(path, str) else list(path):
        name = str(p).rstrip("/\\")
        if is_map_file(name):
            layers.extend(map_layers(name))
            continue
        slide = _slide_in_view()
        if slide is None:
            raise MapFileError(f"{name}: QuPath annotations are in a slide's level-0 pixels: open the"
                               " slide in napari first, then this file")
        data, kwargs, kind = map_layers(name, float(slide.metadata["xmag"]["mpp_x"]))[0]
        kwargs["translate"] = tuple(float(t) for t in slide.translate[-2:])
        kwargs["metadata"]["xmag_annotations"]["slide_path"] = slide.metadata["xmag"]["path"]
        layers.append((data, kwargs, kind))
    return layers


def _slide_in_view() -> Any:
    """The slide layer annotations belong to: the selected one, else the topmost, with an mpp."""
    import napari  # the reader runs inside napari

    viewer = napari.current_viewer()
    if viewer is None:
        return None
    slides = [layer for layer in viewer.layers
              if "xmag" in layer.metadata and layer.metadata["xmag"].get("mpp_x")]
    active = viewer.layers.selection.active
    return active if active in slides else (slides[-1] if slides else None)


def _notify(message: str) -> None:
    from napari.utils.notifications import show_warning  # the reader runs inside napari

    show_warning(message)
