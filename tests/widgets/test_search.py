"""The similar-tissue widget: query from a point or a rectangle, heatmap, hits, going there."""

from __future__ import annotations

import numpy as np
import pytest

from cases import CMU1
from napari_xmag import search
from napari_xmag.features import FeatureSet, write_features
from viewers import open_slide, owned, wait_for

MPP = 0.499
PATCH0 = 224 * 2.0 / MPP  # a 5x patch in level-0 px
STEP = PATCH0 / 2  # stride 112: every inner cell under 4 patches
XS, YS = np.arange(3), np.arange(5)  # 3 x 5 patches fit the 2220 x 2967 slide


def features_of(path, slide_path, seed, copy_from=None):
    coords = np.rint(np.stack(np.meshgrid(XS * STEP, YS * STEP), -1).reshape(-1, 2)).astype(np.int64)
    feats = np.random.default_rng(seed).normal(size=(len(coords), 16)).astype(np.float32)
    if copy_from is not None:
        feats[-1] = 2.0 * copy_from  # this slide's last patch is like the query patch
    attrs = {"model": "xmag", "weights_random": True, "slide_mpp": MPP, "slide_path": str(slide_path),
             "mpp": 2.0, "stride": 112}
    ca = {"patch_size": 224, "patch_size_level0": round(PATCH0), "patch_size_level0_exact": PATCH0,
          "stride": 112, "mpp": 2.0, "name": path.stem, "level0_width": 2220, "level0_height": 2967}
    write_features(path, FeatureSet(coords, feats, attrs, ca))
    return coords, feats


@pytest.fixture
def setup(tmp_path, xmag_cache):
    folder = tmp_path / "features"
    folder.mkdir()
    coords, feats = features_of(folder / "CMU-1-Small-Region.h5", CMU1.path, 0)
    features_of(folder / "elsewhere.h5", tmp_path / "gone.svs", 1, copy_from=feats[4])
    return folder, coords, feats


def test_point_query_heatmap_hits_and_going_there(make_napari_viewer, qtbot, setup) -> None:
    from napari.layers import Image

    from napari_xmag._widgets._common import camera
    from napari_xmag._widgets.search import SearchWidget

    folder, coords, _ = setup
    viewer = make_napari_viewer()
    slide = open_slide(viewer, CMU1.path)
    x0, y0 = coords[4]  # patch 4 is (STEP, 2 STEP): a point on its centre, in world µm
    centre = (np.array([y0, x0]) + PATCH0 / 2 - 0.5) * MPP
    points = viewer.add_points([centre], name="query", units=("um", "um"))
    widget = SearchWidget(viewer)
    widget._features_edit.value = folder / "CMU-1-Small-Region.h5"
    widget._query_edit.value = points
    widget._on_search()
    wait_for(qtbot, widget.task)
    [heat] = owned(viewer, "xmag-search", "similarity")
    assert isinstance(heat, Image) and heat.name == "similarity · CMU-1-Small-Region · random weights"
    query = search.query_from_region(folder / "CMU-1-Small-Region.h5", *centre[::-1] / MPP + 0.5)
    assert query.source["index"] == [4]
    expected = search.similarity_map(folder / "CMU-1-Small-Region.h5", query)
    data, kwargs, _ = expected.layer_data()
    np.testing.assert_allclose(np.asarray(heat.data), data, equal_nan=True)
    np.testing.assert_allclose(heat.translate, np.asarray(kwargs["translate"]) + slide.translate[-2:])
    assert np.nanmax(heat.data) < 1.0 + 1e-6  # cells average the 4 patches over them
    assert [e.kind for e in widget.legend.entries] == ["colorbar"]
    assert "cosine" in widget.legend.entries[0].units
    # this slide only: patch 4 first, cosine 1
    table = widget._table.value
    assert list(table["columns"]) == ["slide", "x", "y", "score"]
    assert table["data"][0] == ["CMU-1-Small-Region", int(x0), int(y0), 1.0]
    assert len(table["data"]) == 10
    widget._table.native.selectRow(0)  # a selected row moves the view to its patch
    view = camera(viewer).center[-2:]
    np.testing.assert_allclose(view, centre + slide.translate[-2:], atol=1.0)

    # a folder: the other slide's last patch is as like the query as the query itself
    widget._folder_edit.value = folder
    widget._top_edit.value = 3
    widget._on_search()
    wait_for(qtbot, widget.task)
    assert len(owned(viewer, "xmag-search", "similarity")) == 1  # replaced, not added
    rows = widget._table.value["data"]
    assert {r[0] for r in rows[:2]} == {"CMU-1-Small-Region", "elsewhere"}
    assert rows[0][3] == rows[1][3] == 1.0 and len(rows) == 3
    other = next(i for i, h in enumerate(widget.hits) if h.slide == "elsewhere")
    widget.go_to(other)  # its slide file is not here: said, not opened
    assert "elsewhere" in widget._status.value and "gone.svs" in widget._status.value
    assert not widget.task.running


def test_rectangle_query_in_prototypes_mode(make_napari_viewer, qtbot, setup) -> None:
    from napari_xmag._widgets.search import SearchWidget, query_region

    folder, coords, _ = setup
    viewer = make_napari_viewer()
    slide = open_slide(viewer, CMU1.path)
    # a rectangle over the centres of patches 0, 1, 3 and 4 (level-0 px -> world µm)
    lo = (np.array([PATCH0 / 2 - 10, PATCH0 / 2 - 10]) - 0.5) * MPP
    hi = (np.array([PATCH0 / 2 + STEP + 10, PATCH0 / 2 + STEP + 10]) - 0.5) * MPP
    shapes = viewer.add_shapes([np.array([lo, [lo[0], hi[1]], hi, [hi[0], lo[1]]])], shape_type="rectangle",
                               units=("um", "um"))
    x, y, w, h = query_region(shapes, slide)
    assert (x, y) == pytest.approx((PATCH0 / 2 - 10, PATCH0 / 2 - 10), abs=1e-3)
    assert (w, h) == pytest.approx((STEP + 20, STEP + 20), abs=1e-3)
    widget = SearchWidget(viewer)
    widget._features_edit.value = folder / "CMU-1-Small-Region.h5"
    widget._query_edit.value = shapes
    widget._mode_edit.value = "prototypes"
    widget._top_edit.value = 4
    widget._on_search()
    wait_for(qtbot, widget.task)
    rows = widget._table.value["data"]
    expected = sorted(tuple(int(v) for v in coords[i]) for i in (0, 1, 3, 4))
    assert sorted((r[1], r[2]) for r in rows) == expected
    assert all(r[3] == 1.0 for r in rows)
    assert "4 patch(es), prototypes" in widget._status.value


@pytest.mark.usefixtures("setup")
def test_widget_says_what_is_wrong(make_napari_viewer, tmp_path) -> None:
    from napari_xmag._widgets.search import SearchWidget

    viewer = make_napari_viewer()
    widget = SearchWidget(viewer)
    widget._on_search()
    assert "Open a slide" in widget._status.value
    open_slide(viewer, CMU1.path)
    widget._on_search()
    assert "Points layer" in widget._status.value
    widget._query_edit.value = viewer.add_points(name="empty")
    widget._on_search()
    assert "empty is empty" in widget._status.value
    viewer.layers["empty"].add([[100.0, 100.0]])
    widget._features_edit.value = tmp_path / "missing.h5"
    widget._on_search()
    assert "missing.h5: no features file" in widget._status.value and not widget.task.running


def test_a_hit_on_a_slide_not_open_opens_it(make_napari_viewer, qtbot, setup, tmp_path) -> None:
    import shutil

    from napari_xmag._widgets.search import SearchWidget

    folder, coords, feats = setup
    copy = shutil.copyfile(CMU1.path, tmp_path / "copy.svs")
    features_of(folder / "elsewhere.h5", copy, 1, copy_from=feats[4])  # now its slide is here
    viewer = make_napari_viewer()
    open_slide(viewer, CMU1.path)
    x0, y0 = coords[4]
    points = viewer.add_points([(np.array([y0, x0]) + PATCH0 / 2 - 0.5) * MPP], units=("um", "um"))
    widget = SearchWidget(viewer)
    widget._features_edit.value = folder / "CMU-1-Small-Region.h5"
    widget._query_edit.value = points
    widget._folder_edit.value = folder
    widget._on_search()
    wait_for(qtbot, widget.task)
    other = next(i for i, h in enumerate(widget.hits) if h.slide == "elsewhere")
    widget.go_to(other)
    wait_for(qtbot, widget.task)  # opened in the background
    slides = [layer.metadata["xmag"]["path"] for layer in viewer.layers if "xmag" in layer.metadata]
    assert slides[-1] == str(copy) and len(slides) == 2
    assert widget._status.value.startswith("Opened elsewhere for hit")
