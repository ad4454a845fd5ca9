"""The demo in napari (``xmag demo --napari``): the sample slide and every map the demo wrote.

A napari shim over :mod:`napari_xmag.demo`, which knows nothing of napari.
"""

from __future__ import annotations

from typing import Any

from ._reader import slide_layer_data
from .demo import DemoResult
from .maps import read_ome_zarr

LayerData = list[tuple[Any, dict[str, Any], str]]


def demo_layers(result: DemoResult) -> LayerData:
    """Layer data tuples: the slide, then every map the demo wrote (OME-Zarr maps)."""
    layers = [slide_layer_data(str(result.slide))]
    for path in result.outputs.values():
        if str(path).endswith(".ome.zarr"):  # each named "PCA · slide · random weights" by its map
            layers.extend(m.layer_data() for m in read_ome_zarr(path))
    return layers


def demo_viewer(result: DemoResult, viewer: Any = None) -> Any:
    """A napari viewer (new, or ``viewer``) holding the slide and the demo's maps."""
    if viewer is None:
        import napari  # here: the layers are made (and tested) without a viewer

        viewer = napari.Viewer(title="napari-xmag demo")
    for data, kw, kind in demo_layers(result):
        getattr(viewer, f"add_{kind}")(data, **kw)
    for layer in viewer.layers:  # the PCA map on top of the slide, the rest hidden until asked
        if "tissue" in layer.name or "k-means" in layer.name or "cosine" in layer.name:
            layer.visible = False
    return viewer
