"""The magnification explorer widget: five views, the footprint, points and rectangles, errors, screenshot."""

from __future__ import annotations

import numpy as np
import pytest

from cases import BOXES, CMU1, save_screenshot, tissue_fraction
from napari_xmag._widgets._common import camera, text_overlay
from napari_xmag.magnification import MAGNIFICATIONS
from napari_xmag.slide import MissingMppWarning
from viewers import canvas_text, wait_for

X = "\N{MULTIPLICATION SIGN}"
NAMED_MPP = {"2.5x": 4.0, "5x": 2.0, "10x": 1.0, "20x": 0.5, "40x": 0.25}


# ---- widget -------------------------------------------------------------------------------
def open_cmu1(viewer):
    from napari_xmag._widgets.magnification import MagnificationExplorer

    [layer] = viewer.open(str(CMU1.path), plugin="napari-xmag")
    return layer, MagnificationExplorer(viewer)


def show(qtbot, widget) -> None:
    """Press *Show magnifications* and wait for the pictures (read in the background)."""
    widget._on_show()
    wait_for(qtbot, widget.task)


def owned(viewer, role):
    from napari_xmag._widgets.magnification import ROLE

    return [layer for layer in viewer.layers if layer.metadata.get(ROLE) == role]


def world_vertices(layer) -> np.ndarray:
    return np.array([[layer.data_to_world(vertex) for vertex in shape] for shape in layer.data])


def assert_patch_centre(viewer, centre) -> None:
    """The 5x patch (the footprint's first shape) is centred on world (y, x) ``centre``."""
    np.testing.assert_allclose(world_vertices(owned(viewer, "footprint")[0])[0].mean(0), centre, atol=0.5)


def test_widget_shows_five_views_and_the_footprint(make_napari_viewer, qtbot) -> None:
    from napari.layers import Image, Shapes

    viewer = make_napari_viewer()
    slide_layer, widget = open_cmu1(viewer)
    assert widget._slide_edit.value is slide_layer
    widget._source_edit.value = "view centre"
    camera(viewer).center = (0, 1480 * 0.499, 1110 * 0.499)  # level-0 (1110.5, 1480.5)
    show(qtbot, widget)
    panels = [layer for layer in viewer.layers if isinstance(layer, Image) and layer is not slide_layer]
    assert [p.metadata["xmag-explorer"] for p in panels] == list(MAGNIFICATIONS)
    assert [p.data.shape[0] for p in panels] == [112, 224, 448, 896, 1792]
    assert all(p.data.shape[0] == p.data.shape[1] for p in panels)
    assert panels[-1].name == "40x · 0.25 µm/px (enlarged)"
    slide_right = (2220 - 0.5) * 0.499
    for panel in panels:
        m = panel.scale[-1]
        assert m == pytest.approx(NAMED_MPP[panel.metadata["xmag-explorer"]], rel=1e-3)
        np.testing.assert_allclose(panel.data.shape[1] * m, 448, rtol=1e-3)  # same physical size
        assert panel.translate[-1] > slide_right  # beside the slide, not on it
        assert panel.interpolation2d == "nearest"  # a coarse view shows its big pixels
        assert str(panel.units[-1]) == "micrometer"
    lefts = [p.translate[-1] - p.scale[-1] / 2 for p in panels]
    np.testing.assert_allclose(np.diff(lefts), 448 * 1.2, rtol=1e-3)
    tops = [p.translate[-2] - p.scale[-2] / 2 for p in panels]
    np.testing.assert_allclose(tops, (1480.5 - 448 / 0.499 / 2 - 0.5) * 0.499, rtol=1e-6)

    # the captions: in the dock, one line per picture left to right, and in the text overlay
    captions = widget._captions.value
    assert f"448 {X} 448 µm field at 5 magnifications" in captions
    lines = captions.split("<br>")[2:]
    assert lines[0].startswith(f"2.5x · 4.00 µm/px · 112 {X} 112 px · level 0 ÷ 8.018")
    assert "#ffa040" in lines[-1] and "no extra detail" in lines[-1]  # the enlarged one stands out
    assert text_overlay(viewer).visible and text_overlay(viewer).text.startswith("2.5x  ·  5x  ·  10x")
    assert canvas_text(viewer) == {}  # no canvas text at all
    assert "40x: enlarged from 20x scan, no extra detail" in widget._status.value
    assert [r["magnification"] for r in widget.rows] == list(MAGNIFICATIONS)
    assert [r["patches/slide"] for r in widget.rows] == [2, 4, 16, 54, 224]  # patches per slide
    assert [e.kind for e in widget.legend.entries] == ["outline"]

    [shapes] = owned(viewer, "footprint")
    assert isinstance(shapes, Shapes) and len(shapes.data) == 2 + 32
    assert list(shapes.features["kind"][:2]) == ["student", "teacher"]
    vertices = world_vertices(shapes)
    # by hand: the 5x patch of 897.8 level-0 px centred at x = 1110.5, snapped to a whole pixel
    x0 = round(1110.5 - 224 * 2.0 / 0.499 / 2)
    y0 = round(1480.5 - 224 * 2.0 / 0.499 / 2)
    side = 224 * 2.0
    np.testing.assert_allclose(vertices[0].min(0), [(y0 - 0.5) * 0.499, (x0 - 0.5) * 0.499], atol=1e-6)
    np.testing.assert_allclose(vertices[0].max(0) - vertices[0].min(0), [side, side], rtol=1e-6)
    crop = vertices[1]
    np.testing.assert_allclose(crop.min(0), vertices[0].min(0))
    np.testing.assert_allclose(crop.max(0) - crop.min(0), [224 * 0.5, 224 * 0.5], rtol=1e-6)
    np.testing.assert_allclose(vertices[2].min(0)[1] - crop.min(0)[1], 224 * 0.499)  # next crop: 224 px
    # the student outline on the 5x picture is the picture's edge
    five = panels[1]
    left, top = five.translate[-1] - five.scale[-1] / 2, five.translate[-2] - five.scale[-2] / 2
    np.testing.assert_allclose(vertices[17].min(0), [top, left], atol=1.0)
    assert set(shapes.edge_color[:2, :3].round(2).tolist()[0]) != set(shapes.edge_color[1, :3].round(2))

    # again, elsewhere: the same layers, updated in place
    before = list(viewer.layers)
    camera(viewer).center = (0, 1000 * 0.499, 900 * 0.499)
    show(qtbot, widget)
    assert len(viewer.layers) == len(before) and all(p in viewer.layers for p in panels)


def test_widget_takes_a_point_or_a_rectangle(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    slide_layer, widget = open_cmu1(viewer)
    points = viewer.add_points([[700.0, 500.0], [740.0, 560.0]], name="here")  # world µm (y, x)
    rectangles = viewer.add_shapes([[[600, 400], [600, 600], [700, 600], [700, 400]]], name="box")
    widget._on_layers_changed()
    assert points in widget._source_edit.choices and rectangles in widget._source_edit.choices
    assert slide_layer in widget._slide_edit.choices and points not in widget._slide_edit.choices

    widget._source_edit.value = points  # the last point, none being selected
    widget._fov_edit.value = 224.0
    show(qtbot, widget)
    assert owned(viewer, "5x"), widget._status.value
    [five] = owned(viewer, "5x")
    assert five.data.shape[:2] == (112, 112)
    [shapes] = owned(viewer, "footprint")
    centre = world_vertices(shapes)[0].mean(0)
    np.testing.assert_allclose(centre, [740, 560], atol=0.5)  # the 5x patch is centred on the point
    kinds = list(shapes.features["kind"])  # 224 µm field inside the 448 µm patch: no picture outlines
    assert kinds == ["student"] + ["teacher"] * 16 + ["field"] and shapes.nshapes == 18
    np.testing.assert_allclose(shapes.edge_color[-1], [1, 1, 1, 1])  # the field is white
    assert list(shapes.features["label"][[0, 17]]) == ["5x student patch (224 px)", "field of view"]

    points.selected_data = {0}
    show(qtbot, widget)
    assert_patch_centre(viewer, [700, 500])

    widget._source_edit.value = rectangles  # 200 x 100 µm
    show(qtbot, widget)
    assert owned(viewer, "20x")[0].data.shape[:2] == (200, 400)
    assert owned(viewer, "2.5x")[0].data.shape[:2] == (25, 50)
    field = world_vertices(owned(viewer, "footprint")[0])[-1]
    np.testing.assert_allclose([field.min(0), field.max(0)], [[600, 400], [700, 600]], atol=1e-6)

    # following a point: moving it redraws
    widget._source_edit.value = points
    widget._follow_edit.value = True
    centre = tuple(camera(viewer).center)
    points.data = np.array([[1000.0, 300.0]])
    wait_for(qtbot, widget.task)
    assert_patch_centre(viewer, [1000, 300])
    assert tuple(camera(viewer).center) == centre  # following leaves the view where it is
    widget._follow_edit.value = False
    points.data = np.array([[1200.0, 300.0]])
    assert not widget.task.running
    assert_patch_centre(viewer, [1000, 300])


def test_widget_says_what_is_wrong(make_napari_viewer) -> None:
    from napari_xmag._widgets.magnification import MagnificationExplorer

    viewer = make_napari_viewer()
    widget = MagnificationExplorer(viewer)
    widget._on_show()
    assert "Open a slide" in widget._status.value
    viewer.open(str(CMU1.path), plugin="napari-xmag")
    widget._source_edit.value = "view centre"
    camera(viewer).center = (0, -5000, -5000)
    widget._on_show()
    assert "view centre: the point" in widget._status.value and "off the slide" in widget._status.value
    assert len(viewer.layers) == 1  # nothing half-added
    empty = viewer.add_points(name="nothing yet")
    widget._source_edit.value = empty
    widget._on_show()
    assert "nothing yet is empty" in widget._status.value
    with pytest.warns(MissingMppWarning):
        [no_mpp] = viewer.open(str(BOXES.path), plugin="napari-xmag")
    widget._slide_edit.value = no_mpp
    widget._on_show()
    assert "boxes records no µm per pixel" in widget._status.value and "mpp override" in widget._status.value
    assert len(viewer.layers) == 3


def test_npe2_offers_the_widget(make_napari_viewer) -> None:
    from napari_xmag._widgets.magnification import MagnificationExplorer

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-xmag", "Magnification explorer")
    assert isinstance(widget, MagnificationExplorer)


# ---- in a real viewer ---------------------------------------------------------------------
def test_screenshot(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    slide_layer, widget = open_cmu1(viewer)
    qtbot.wait(50)  # let the canvas take its size before the widget frames the row
    widget._source_edit.value = "view centre"
    camera(viewer).center = (0, 1505 * 0.499, 1090 * 0.499)
    show(qtbot, widget)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    save_screenshot(shot, "explorer-cmu1-row.png", tmp_path)  # docs: cold_viewer.py
    h, w = shot.shape[:2]
    # five pictures of tissue across the middle of the canvas, black canvas elsewhere
    band = shot[int(0.3 * h) : int(0.6 * h)]
    assert tissue_fraction(band) > 0.15, tissue_fraction(band)
    columns = tissue_fraction(band[:, : w // 5]), tissue_fraction(band[:, -w // 5 :])
    assert min(columns) > 0.05, columns  # the row spans the canvas, first picture to last
    assert (shot[: int(0.1 * h), ..., :3].max(-1) < 30).mean() > 0.9

    # a field small enough for the screen to show every pixel: detail appears, then stops at 20x
    widget._fov_edit.value = 112.0
    camera(viewer).center = (0, 1505 * 0.499, 1090 * 0.499)
    show(qtbot, widget)
    save_screenshot(viewer.screenshot(canvas_only=True, flash=False), "explorer-cmu1-detail.png", tmp_path)
    # the slide with the footprint: the 5x patch and its 16 teacher crops on the tissue
    widget._fov_edit.value = 448.0
    camera(viewer).center = (0, 1505 * 0.499, 1090 * 0.499)
    show(qtbot, widget)
    viewer.fit_to_view(layers=[slide_layer])
    save_screenshot(viewer.screenshot(canvas_only=True, flash=False), "explorer-cmu1-slide.png", tmp_path)
