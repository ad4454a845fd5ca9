"""The few-shot probe widget: trains, saves, loads, says what is wrong, screenshot."""

from __future__ import annotations

import numpy as np

from cases import save_screenshot
from napari_xmag import fewshot
from two_tissues import chosen, painted
from viewers import open_slide, wait_for
from viewers import owned as owned_by


def owned(viewer, role):
    return owned_by(viewer, "xmag-probe", role)


def trained_widget(viewer, embedded, qtbot):
    from napari_xmag._widgets.probe import ProbeWidget

    slide, path, data, truth = embedded
    slide_layer = open_slide(viewer, slide)
    raster, scale, translate = painted(data, truth, chosen(truth))
    annotations = viewer.add_labels(raster, name="annotations", scale=scale, translate=translate, opacity=0.8,
                                   units=("um", "um"))
    widget = ProbeWidget(viewer)
    assert widget._slide_edit.value is slide_layer
    widget._features_edit.value = path
    widget._annotations_edit.value = annotations
    widget._on_train()
    wait_for(qtbot, widget.task)  # trained in the background: the UI stays live
    return widget, slide_layer


def test_widget_trains_saves_and_loads(make_napari_viewer, embedded, tmp_path, qtbot) -> None:
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    widget, _ = trained_widget(viewer, embedded, qtbot)
    assert widget._status.value.startswith("probe trained on 8 patches"), widget._status.value
    [seg] = owned(viewer, "segmentation")
    heat = owned(viewer, "heatmaps")
    assert isinstance(seg, Labels) and set(np.unique(seg.data)) <= {0, 1, 2}
    assert len(heat) == 2 and all(isinstance(h, Image) for h in heat)
    # the sample slide's features come from random weights: every probe layer says so, kind first
    assert [h.name for h in heat] == [f"probe class {i} · sample · random weights" for i in (1, 2)]
    assert seg.name == "probe classes · sample · random weights"
    assert [e.kind for e in widget.legend.entries] == ["colorbar", "colorbar", "classes"]
    _, expected, _ = fewshot.predict_maps(embedded[1], widget._probe)[1].layer_data()
    np.testing.assert_allclose(seg.scale, expected["scale"])
    np.testing.assert_allclose(seg.translate, expected["translate"])
    before = np.array(seg.data)

    widget._probe_file_edit.value = tmp_path / "tumour.npz"
    widget._on_save()
    assert (tmp_path / "tumour.npz").is_file()
    widget._probe = None
    widget._on_load()
    wait_for(qtbot, widget.task)
    [seg] = owned(viewer, "segmentation")  # replaced, not duplicated
    np.testing.assert_array_equal(seg.data, before)
    assert len(owned(viewer, "heatmaps")) == 2


def test_widget_says_what_is_wrong(make_napari_viewer, embedded, tmp_path, qtbot) -> None:
    from napari_xmag._widgets.probe import ProbeWidget

    viewer = make_napari_viewer()
    widget = ProbeWidget(viewer)
    widget._on_train()
    assert "Open a slide" in widget._status.value
    open_slide(viewer, embedded[0])
    widget._on_new_annotations()
    annotations = widget._annotations_edit.value
    assert annotations is not None and annotations.scale[-1] == 16.0
    widget._features_edit.value = tmp_path / "missing.h5"
    annotations.data[10:12, 10:12] = 1
    widget._on_train()
    wait_for(qtbot, widget.task)
    assert "inference widget" in widget._status.value
    widget._features_edit.value = embedded[1]
    widget._on_train()
    wait_for(qtbot, widget.task)
    assert "at least 2 classes" in widget._status.value or "no embedded patch" in widget._status.value


def test_npe2_offers_the_widget(make_napari_viewer) -> None:
    from napari_xmag._widgets.probe import ProbeWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-xmag", "XMAG few-shot probe")
    assert isinstance(widget, ProbeWidget)


def test_screenshot(make_napari_viewer, qtbot, embedded, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    widget, _ = trained_widget(viewer, embedded, qtbot)
    viewer.window.add_dock_widget(widget, name="XMAG few-shot probe", area="right")
    for layer in owned(viewer, "heatmaps"):
        layer.visible = False
    annotations = viewer.layers["annotations"]
    annotations.colormap = {None: [0, 0, 0, 0], 0: [0, 0, 0, 0], 1: "#00ffff", 2: "#ffff00"}
    annotations.opacity = 1.0
    viewer.layers.move(viewer.layers.index(annotations), len(viewer.layers))  # painted dabs on top
    qtbot.wait(200)  # let the canvas take its size beside the dock before framing the slide
    viewer.reset_view()
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(shot, "widget-probe-docked.png", tmp_path)  # docs: cold_viewer.py
    assert shot.shape[0] > 300
