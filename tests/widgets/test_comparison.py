"""The teacher comparison widget, driven without clicking: set values, call handlers, wait."""

from __future__ import annotations

import numpy as np
import pytest

from cases import CMU1, save_screenshot
from comparisons import hand_result
from napari_xmag._widgets._common import camera, text_overlay
from napari_xmag._widgets.comparison import RANDOM, ROLE, WHOLE_SLIDE, ComparisonWidget, roi_from_rectangle
from napari_xmag.compare import cosine_map, read_comparison, write_comparison
from napari_xmag.compare import report_rows as table_rows
from napari_xmag.slide import Slide
from viewers import canvas_text, open_slide, wait_for

# CMU-1's 5x grid steps 898 level-0 px; this ROI holds the middle column's 2nd and 3rd patches.
ROI = (898, 898, 898, 1796)
MPP = 0.499


@pytest.fixture(autouse=True)
def _tiny_models(monkeypatch) -> None:
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")  # the documented switch: tiny random models


def _widget(viewer) -> ComparisonWidget:
    open_slide(viewer, CMU1.path)
    widget = ComparisonWidget(viewer)
    widget._weights_edit.value = RANDOM
    return widget


def _run(widget, qtbot) -> None:
    widget._on_run()
    assert not widget._run_button.enabled
    wait_for(qtbot, widget.task)
    assert widget._run_button.enabled


def _cell(value):
    """A table cell as shown: magicgui's Table turns number-like strings into numbers."""
    try:
        return float(value)
    except ValueError:
        return value


def _roi_rectangle(roi=ROI, mpp=MPP) -> np.ndarray:
    """The rectangle over a level-0 box, in world µm (pixel x spans [(x - 0.5) mpp, (x + 0.5) mpp))."""
    x, y, w, h = roi
    y0, x0 = (y - 0.5) * mpp, (x - 0.5) * mpp
    y1, x1 = (y + h - 0.5) * mpp, (x + w - 0.5) * mpp
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])


def test_roi_from_rectangle_by_hand() -> None:
    # 0.5 µm/px: world x 49.75 µm is the boundary 49.75 / 0.5 + 0.5 = 100 px; 149.75 µm is 300 px.
    corners = np.array([[99.75, 49.75], [199.75, 149.75]])
    assert roi_from_rectangle(corners, (0.5, 0.5)) == (100, 200, 200, 200)
    # a slide layer moved by (10, 20) µm: the same rectangle, moved with it
    assert roi_from_rectangle(corners + np.array([10, 20]), (0.5, 0.5), (10, 20)) == (100, 200, 200, 200)
    assert roi_from_rectangle(_roi_rectangle(), (MPP, MPP)) == ROI


def test_run_on_roi_shows_layers_and_table(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    viewer.add_shapes([_roi_rectangle()], shape_type="rectangle", name="roi", units=("um", "um"))
    widget._roi_edit.value = viewer.layers["roi"]
    out = tmp_path / "cmp"
    widget._out_edit.value = out
    assert widget._roi() == ROI
    _run(widget, qtbot)
    assert widget.result is not None, widget._status.value

    result = read_comparison(out)
    assert result.report["roi"] == list(ROI)
    assert result.coords.tolist() == [[898, 898], [898, 1796]]
    expected = cosine_map(result)
    owned = {layer.metadata[ROLE]: layer for layer in viewer.layers if ROLE in layer.metadata}
    assert set(owned) == {"cosine", "student slide", "student clusters", "teacher slide",
                          "teacher clusters"}  # no canvas text: captions are in the dock and overlay
    assert text_overlay(viewer).visible and "teacher clusters" in text_overlay(viewer).text
    assert [e.kind for e in widget.legend.entries] == ["colorbar", "classes", "classes"]
    assert widget.legend.entries[0].units.startswith("cosine")
    cos = owned["cosine"]
    assert cos.name == expected.layer_data()[1]["name"] == "cosine · CMU-1-Small-Region · random weights"
    np.testing.assert_allclose(cos.scale, expected.scale)
    np.testing.assert_allclose(cos.translate, expected.translate)
    np.testing.assert_array_equal(cos.data, expected.data)  # NaN where not scored
    assert np.nanmax(cos.data) == pytest.approx(np.nanmax(result.cosine))
    assert cos.colormap.name == "viridis"

    # the student's and the teacher's clusters one and two slide widths (plus 5%) to the right
    width = CMU1.level_dimensions[0][0] * MPP
    for i, side in enumerate(("student", "teacher"), start=1):
        labels = owned[f"{side} clusters"]
        assert labels.name.startswith(f"{side} clusters · ") and labels.name.endswith(" · random weights")
        np.testing.assert_allclose(labels.scale, expected.scale)
        np.testing.assert_allclose(labels.translate, np.add(expected.translate, (0, i * width * 1.05)))
        assert labels.data.max() >= 1 and (labels.data > 0).sum() == 2
        np.testing.assert_allclose(owned[f"{side} slide"].translate, (0, i * width * 1.05))
    rows, cols = expected.grid.cells(result.coords)
    student = owned["student clusters"].data[rows, cols]
    np.testing.assert_array_equal(student, result.student_clusters)

    value = widget._table.value
    rows_ = table_rows(result.report)
    assert list(value["index"]) == list(rows_)
    assert [_cell(r[0]) for r in value["data"]] == [_cell(v) for v in rows_.values()]
    assert rows_["student patches"] == "2" and rows_["teacher crops"] == "32"
    assert rows_["speed-up"] == f"{result.report['speedup']:.1f}x"
    assert rows_["CKA"] == f"{result.report['cka']:.3f}"
    assert rows_["ARI"].startswith(f"{result.report['ari']:.3f}")
    assert rows_["weights"] == "RANDOM: student, teacher"
    assert rows_["caveat"].startswith("2 patches: CKA, ARI and the cosine from fewer than 30")
    names = [layer.name for layer in viewer.layers]
    assert len({n[:18] for n in names}) == len(names), names
    # the ranking: the one held-out patch of the two; no picture until a step
    ranking = widget._ranking_table.value["data"]
    assert len(ranking) == int(result.scored.sum()) == 1 and widget.rank == 0
    assert ranking[0][:3] == [1, *result.coords[result.scored][0].tolist()]
    # the view frames the three panels: the teacher's, two slide widths to the right, is in it
    teacher = owned["teacher clusters"]
    centre_x = camera(viewer).center[-1]
    assert width < centre_x < teacher.translate[-1] + width

    # Load the folder into a fresh widget: the same layers, the same table
    viewer2 = make_napari_viewer()
    widget2 = _widget(viewer2)
    widget2._out_edit.value = out
    widget2._on_load()
    cos2 = next(layer for layer in viewer2.layers if layer.metadata.get(ROLE) == "cosine")
    np.testing.assert_array_equal(cos2.data, expected.data)
    assert widget2._table.value["data"] == value["data"]


def test_cancel_writes_nothing(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget._roi_edit.value = WHOLE_SLIDE
    out = tmp_path / "cancelled"
    widget._out_edit.value = out
    widget._on_run()
    widget.task.cancel()
    wait_for(qtbot, widget.task)
    assert widget.result is None
    assert widget._status.value.startswith("Cancelled") and "nothing was written" in widget._status.value
    assert not out.exists()
    assert not [layer for layer in viewer.layers if ROLE in layer.metadata]


def test_load_errors_are_said(make_napari_viewer, tmp_path) -> None:
    widget = _widget(make_napari_viewer())
    widget._out_edit.value = tmp_path
    widget._on_load()
    assert str(tmp_path) in widget._status.value


def test_screenshot_whole_cmu1(make_napari_viewer, qtbot, tmp_path) -> None:
    """The whole of CMU-1 (4 patches, 64 crops; tiny random models); a screenshot for the docs."""
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    widget._out_edit.value = tmp_path / "whole"
    _run(widget, qtbot)
    assert widget.result is not None and len(widget.result) == 4
    viewer.window.resize(1600, 1000)
    qtbot.wait(50)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    save_screenshot(shot, "widget-comparison-docked.png", tmp_path)  # docs: cold_viewer.py
    assert shot.ndim == 3 and shot.shape[-1] == 4


# ---- where the student disagrees: a comparison of CMU-1 made by hand -----------------------
NAN = float("nan")
COORDS = [(0, 0), (898, 0), (0, 898), (898, 898), (898, 1796), (898, 2694), (0, 1796)]
COSINE = [0.5, NAN, 0.2, 0.5, 0.9, -0.1, NAN]
CLUSTERS = [1, 1, 2, 2, 3, 3, 4]
ORDER = [5, 2, 0, 3, 4]  # lowest cosine first; 0 and 3 tie and keep their order


def _patch_centre(x: int, y: int, size0: float = 897.7955911823648) -> tuple[float, float]:
    """World (y, x) µm of a 5x patch's centre on the slide layer (pixel i centred at i * mpp)."""
    return ((y + size0 / 2 - 0.5) * MPP, (x + size0 / 2 - 0.5) * MPP)


def test_disagreement_tables_steps_and_pictures(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    out = write_comparison(hand_result(tmp_path / "hand", COORDS, COSINE, CLUSTERS))
    widget._out_edit.value = out
    widget._on_load()
    assert widget.result is not None, widget._status.value

    rows = widget._ranking_table.value
    assert list(rows["columns"]) == ["rank", "x", "y", "cosine", "cluster"]
    assert [[_cell(v) for v in r] for r in rows["data"]] == [
        [rank, *COORDS[i], round(COSINE[i], 3), CLUSTERS[i]] for rank, i in enumerate(ORDER, start=1)]
    clusters = widget._clusters_table.value
    assert [r[0] for r in clusters["data"]] == ["cluster 2", "cluster 3", "cluster 1", "cluster 4"]
    assert [_cell(r[3]) for r in clusters["data"]] == [0.35, 0.4, 0.5, "n/a"]  # mean cosine
    assert clusters["data"][0][1:3] == [2, 2]
    assert "weakest on cluster 2" in widget._step_status.value

    crop_offsets = (0, 224, 449, 673)
    with Slide(CMU1.path) as slide:
        for step, (action, rank) in enumerate([(widget._on_next, 1), (widget._on_next, 2),
                                               (widget._on_previous, 1)]):
            action()
            wait_for(qtbot, widget.views_task)
            patch = ORDER[rank - 1]
            x, y = COORDS[patch]
            assert widget.rank == rank and widget.views.patch.patch == patch, step
            np.testing.assert_allclose(camera(viewer).center[-2:], _patch_centre(x, y), rtol=1e-6)
            owned = {layer.metadata[ROLE]: layer for layer in viewer.layers if ROLE in layer.metadata}
            mosaic, student = owned["teacher mosaic"], owned["student view"]
            crops = [slide.read_region(x + c, y + r, 224, mpp=0.5).image
                     for r in crop_offsets for c in crop_offsets]
            rows_of_crops = [np.hstack(crops[4 * r:4 * r + 4]) for r in range(4)]  # row-major
            np.testing.assert_array_equal(mosaic.data, np.vstack(rows_of_crops))
            np.testing.assert_array_equal(student.data, slide.read_region(x, y, 224, mpp=2.0).image)
            # each picture at the patch's physical size, beside it: the student's left, the teacher's right
            width = 897.7955911823648 * MPP
            np.testing.assert_allclose(np.multiply(mosaic.scale, mosaic.data.shape[:2]), (width, width))
            np.testing.assert_allclose(np.multiply(student.scale, student.data.shape[:2]), (width, width))
            cx = _patch_centre(x, y)[1]
            assert student.translate[-1] < cx - width / 2 < cx + width / 2 < mosaic.translate[-1]
            assert f"Rank {rank} of 5: patch {patch} at x={x}, y={y} px" in widget._step_status.value
            caption = f"student 5x  ·  rank {rank}: cosine {COSINE[patch]:.3f}  ·  teacher 20x"
            assert text_overlay(viewer).text == caption

    assert not widget.show_rank(0) and widget.rank == 1  # before the first: stays
    assert not widget.show_rank(6) and "last ranked patch" in widget._step_status.value
    assert canvas_text(viewer) == {}  # captions in the dock and the overlay only
    assert [e.kind for e in widget.legend.entries][-1] == "outline"

    # a new result takes the last one's pictures away
    widget._on_load()
    assert widget.rank == 0 and not [layer for layer in viewer.layers
                                     if layer.metadata.get(ROLE) in ("student view", "teacher mosaic")]
