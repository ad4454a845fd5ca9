"""A slide that records no µm/px (a generic tiled TIFF, like many TCGA JPEG 2000 exports), from
napari alone: the reader's warning is a notification, the widgets ask for an mpp override and
then embed, map and explore it exactly as they do CMU-1 (the same pixels at 0.499 µm/px)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xmag._widgets._common import camera
from napari_xmag.slide import MissingMppWarning
from viewers import Notifications, wait_for

MPP = 0.499  # CMU-1's, which the TIFF does not record


@pytest.fixture
def no_mpp_tiff(tmp_path, cmu1_rgb):
    import tifffile

    path = tmp_path / "no-mpp.tiff"
    tifffile.imwrite(path, cmu1_rgb, tile=(256, 256), photometric="rgb")  # no resolution unit: no mpp
    return path


def test_embedded_mapped_and_explored_from_napari(make_napari_viewer, qtbot, tmp_path, no_mpp_tiff,
                                                  monkeypatch) -> None:
    from napari_xmag._widgets.inference import InferenceWidget
    from napari_xmag._widgets.magnification import MagnificationExplorer

    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    viewer = make_napari_viewer()
    with Notifications() as said, pytest.warns(MissingMppWarning):
        [layer] = viewer.open(str(no_mpp_tiff), plugin="napari-xmag")
    assert any("no-mpp.tiff" in m and "µm" in m for m in said), said  # shown, not only logged
    assert layer.metadata["xmag"]["mpp_x"] is None

    widget = InferenceWidget(viewer)
    widget._weights_edit.value = "random"
    widget._stride_edit.value = 112
    widget._grid_edit.value = True
    widget._out_edit.value = tmp_path / "features"
    with Notifications() as said:
        widget._on_run()
    assert not widget.task.running and "mpp override" in widget._status.value
    assert any("mpp override" in m for m in said), said

    widget._mpp_override_edit.value = MPP
    widget._on_run()
    wait_for(qtbot, widget.task)
    assert widget._status.value.startswith("embedded:"), widget._status.value
    meta = layer.metadata["xmag"]
    assert (meta["mpp_x"], meta["mpp_source"]) == (MPP, "override")  # kept with the layer
    np.testing.assert_allclose(layer.scale[-2:], (MPP, MPP))
    [pca] = [lyr for lyr in viewer.layers if lyr.name.startswith("PCA · no-mpp")]
    k = pca.metadata["xmag_map"]["display_subcells"]  # sub-cells per cell: the map ends with the slide
    np.testing.assert_allclose(pca.scale, (449 / k * MPP, 449 / k * MPP), rtol=1e-3)  # as CMU-1, stride 112
    [grid] = [lyr for lyr in viewer.layers if lyr.name.startswith("patch grid (18) · no-mpp")]
    assert grid.nshapes == 18  # the same 18 patches as CMU-1

    explorer = MagnificationExplorer(viewer)
    assert explorer._mpp_override_edit.value == pytest.approx(MPP)  # the layer's override, shown
    explorer._source_edit.value = "view centre"
    camera(viewer).center = (0, 1480 * MPP, 1110 * MPP)
    explorer._on_show()
    wait_for(qtbot, explorer.task)
    [five] = [lyr for lyr in viewer.layers if lyr.metadata.get("xmag-explorer") == "5x"]
    assert five.data.shape[:2] == (224, 224)
    np.testing.assert_allclose(five.scale[-1], 2.0, rtol=1e-3)
