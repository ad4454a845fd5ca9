"""The XMAG inference widget, without clicking: set controls, call handlers, wait, assert layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cases import CMU1, save_screenshot
from viewers import open_slide, wait_for
from viewers import owned as owned_by


@pytest.fixture(autouse=True)
def _tiny_models(monkeypatch) -> None:
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")  # the documented switch: tiny random models

def make_widget(viewer, tmp_path, **maps):
    from napari_xmag._widgets.inference import InferenceWidget

    widget = InferenceWidget(viewer)
    widget._weights_edit.value = "random"
    widget._stride_edit.value = 112
    widget._out_edit.value = tmp_path / "features"
    widget._device_edit.value = "cpu"
    for key, value in maps.items():
        getattr(widget, f"_{key}_edit").value = value
    return widget


def run(qtbot, widget) -> None:
    widget._on_run()
    wait_for(qtbot, widget.task)


def owned(viewer, role):
    return owned_by(viewer, "xmag-inference", role)


def test_embeds_and_adds_aligned_maps(make_napari_viewer, qtbot, tmp_path) -> None:
    from napari.layers import Image, Labels, Shapes
    from qtpy.QtCore import QTimer

    from napari_xmag import maps
    from napari_xmag.features import read_features

    viewer = make_napari_viewer()
    slide_layer = open_slide(viewer, CMU1.path)
    widget = make_widget(viewer, tmp_path, mask=True, grid=True, k=4)
    assert widget._slide_edit.value is slide_layer

    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    widget._on_run()
    wait_for(qtbot, widget.task)
    timer.stop()
    # the event loop kept turning while the worker embedded: the viewer stayed responsive
    assert len(ticks) >= 20, len(ticks)
    print(f"event-loop ticks during the run: {len(ticks)}")

    assert widget._status.value.startswith("embedded:"), widget._status.value
    [h5] = list((tmp_path / "features").rglob("*.h5"))
    assert h5.parent.parent.name == "xmag-random"
    data = read_features(h5)
    assert data.attrs["weights_random"] is True

    [pca] = owned(viewer, "pca")
    ref = maps.pca_map(h5)
    assert isinstance(pca, Image) and pca.rgb and pca.name.endswith(" · random weights")
    # the map's last cells reach past CMU-1's edge: drawn at k sub-cells per cell, ending with it
    k = pca.metadata["xmag_map"]["display_subcells"]
    _, ref_kw, _ = ref.layer_data()
    np.testing.assert_allclose(pca.scale, ref_kw["scale"])
    np.testing.assert_allclose(pca.translate, ref_kw["translate"])
    # by hand (docs/maps.md): CMU-1 at 5x stride 112, step 449 level-0 px, first patch (449, 898)
    assert k == 8 and pca.data.shape[:2] == (ref.data.shape[0] * k, ref.data.shape[1] * k)
    np.testing.assert_allclose(pca.scale, (449 / k * 0.499, 449 / k * 0.499), rtol=1e-3)
    x0, y0 = data.coords.min(0)
    expected = ((y0 - 0.5 + 224.5 / k) * 0.499, (x0 - 0.5 + 224.5 / k) * 0.499)
    np.testing.assert_allclose(pca.translate, expected, rtol=1e-3)

    [km] = owned(viewer, "kmeans")
    assert isinstance(km, Labels)
    assert set(np.unique(km.data)) <= set(range(5)) and km.data.max() >= 2
    np.testing.assert_allclose(km.translate, pca.translate)  # on the same sub-cells as PCA
    assert km.metadata["xmag_map"]["weights_random"] is True and km.name.startswith("k-means (k=4) · ")

    [mask] = owned(viewer, "mask")
    assert isinstance(mask, Labels) and set(np.unique(mask.data)) == {0, 1}
    ds = mask.metadata["xmag_map"]["grid"]["step_x"]  # mask pixels of `ds` level-0 px
    np.testing.assert_allclose(mask.scale, (ds * 0.499, ds * 0.499), rtol=1e-3)
    np.testing.assert_allclose(mask.translate, ((0.5 * ds - 0.5) * 0.499,) * 2, rtol=1e-3)

    assert pca.name.startswith("PCA · CMU-1-Small-Region")
    # one legend per map: PCA's key, the clusters' and the mask's classes, the grid's swatch
    kinds = [entry.kind for entry in widget.legend.entries]
    assert kinds == ["rgb", "classes", "classes", "outline"], kinds
    assert [name for name, _ in widget.legend.entries[1].classes] == [f"cluster {i}" for i in range(1, 5)]
    names = [layer.name for layer in viewer.layers]
    assert len({n[:18] for n in names}) == len(names), names  # they stay apart in the layer list

    [grid] = owned(viewer, "grid")
    assert isinstance(grid, Shapes) and grid.nshapes == len(data) == 18
    first = np.asarray(grid.data[0])
    size0 = data.coords_attrs["patch_size_level0_exact"]
    x, y = data.coords[0]
    np.testing.assert_allclose(first.min(0), ((y - 0.5) * 0.499, (x - 0.5) * 0.499))
    np.testing.assert_allclose(first.max(0), ((y + size0 - 0.5) * 0.499, (x + size0 - 0.5) * 0.499))

    # the probe widget picks up the features file of the slide's maps
    from napari_xmag._widgets.probe import ProbeWidget

    assert Path(ProbeWidget(viewer)._features_edit.value) == h5

    # a second run reuses the features file and replaces (not duplicates) the layers
    n_layers = len(viewer.layers)
    run(qtbot, widget)
    assert widget._status.value.startswith("reused:"), widget._status.value
    assert len(viewer.layers) == n_layers


def test_cancel_before_the_first_batch_writes_nothing(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    open_slide(viewer, CMU1.path)
    widget = make_widget(viewer, tmp_path, live=False)
    widget._on_run()
    widget.task.cancel()  # before the first batch: stops at once
    wait_for(qtbot, widget.task)
    assert widget._status.value.startswith("Cancelled"), widget._status.value
    assert "nothing was written" in widget._status.value
    assert not list((tmp_path / "features").rglob("*.h5*"))
    assert len(viewer.layers) == 1 and widget._run_button.enabled


def test_live_maps_fill_in_then_give_way_to_the_final_maps(make_napari_viewer, qtbot, tmp_path) -> None:
    """Updates arrive on the UI thread while the worker embeds (the grid first, then the done
    mask and the live PCA); Cancel keeps what is done, the next run resumes from it, and the
    final maps replace the live ones."""
    from napari_xmag import maps

    viewer = make_napari_viewer()
    open_slide(viewer, CMU1.path)
    widget = make_widget(viewer, tmp_path, kmeans=False)
    assert widget._live_edit.value  # the default
    seen = []
    show = widget._on_live

    def record(layer, update):
        seen.append(update)
        show(layer, update)
        if update.done >= 2:
            widget.task.cancel()

    widget._on_live = record
    widget._on_run()
    wait_for(qtbot, widget.task)
    assert seen[0].done == 0 and seen[-1].done >= 2
    assert "kept" in widget._status.value and "resume" in widget._status.value, widget._status.value
    [progress] = owned(viewer, "live-progress")
    assert (np.asarray(progress.data) == 2).sum() > 0  # what is done stays on the canvas
    assert list((tmp_path / "features").rglob("*.h5.partial"))

    seen.clear()
    widget._on_live = lambda layer, update: (seen.append(update), show(layer, update))
    widget._on_run()
    wait_for(qtbot, widget.task)
    assert widget._status.value.startswith("embedded:"), widget._status.value
    assert seen[0].done >= 2 and seen[-1].final  # resumed, then every patch
    assert not owned(viewer, "live-progress") and not owned(viewer, "live-pca")
    [h5] = list((tmp_path / "features").rglob("*.h5"))
    [pca] = owned(viewer, "pca")
    ref, _, _ = maps.pca_map(h5).layer_data()
    np.testing.assert_array_equal(np.asarray(pca.data), ref)  # the final map, refined over all patches
    assert not list((tmp_path / "features").rglob("*.partial"))


def test_says_what_is_wrong(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    widget = make_widget(viewer, tmp_path)
    widget._on_run()
    assert "Open a slide" in widget._status.value
    open_slide(viewer, CMU1.path)
    widget._model_edit.value = "no-such-model"
    run(qtbot, widget)
    assert "no-such-model" in widget._status.value
    assert len(viewer.layers) == 1


def test_npe2_offers_the_widget(make_napari_viewer) -> None:
    from napari_xmag._widgets.inference import InferenceWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-xmag", "XMAG inference")
    assert isinstance(widget, InferenceWidget)


def test_screenshot(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    open_slide(viewer, CMU1.path)
    widget = make_widget(viewer, tmp_path, grid=True, k=4)
    viewer.window.add_dock_widget(widget, name="XMAG inference", area="right")
    run(qtbot, widget)
    for layer in owned(viewer, "pca"):
        layer.visible = False  # the k-means segmentation and the grid over the tissue
    qtbot.wait(200)  # let the canvas take its size beside the dock before framing the slide
    viewer.reset_view()
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(shot, "widget-inference-docked.png", tmp_path)  # docs: cold_viewer.py
    assert shot.shape[0] > 300
