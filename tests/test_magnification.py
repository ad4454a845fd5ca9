"""The magnification explorer's library: views from the right level, sizes in µm, footprints, layouts."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

from cases import BOXES, CMU1
from napari_xmag import magnification as explorer
from napari_xmag.magnification import MAGNIFICATIONS, SlideExplorer, field_of_view
from napari_xmag.slide import MissingMppError, MissingMppWarning, Slide

X = "\N{MULTIPLICATION SIGN}"
NAMED_MPP = {"2.5x": 4.0, "5x": 2.0, "10x": 1.0, "20x": 0.5, "40x": 0.25}
ENLARGED = "enlarged from 20x scan, no extra detail"


@pytest.fixture(scope="module")
def cmu1() -> SlideExplorer:
    with Slide(CMU1.path) as slide:
        yield SlideExplorer(slide)


@pytest.fixture(scope="module")
def pyramid(pyramid_path: Path) -> SlideExplorer:
    with Slide(pyramid_path) as slide:
        yield SlideExplorer(slide)


# ---- library ------------------------------------------------------------------------------
def test_cmu1_single_level_is_reduced_or_enlarged_from_level_0(cmu1: SlideExplorer) -> None:
    """0.499 µm/px, one level: every view comes from level 0; 40x is enlarged and says so."""
    fov = field_of_view(cmu1.slide, point=(1110, 1480), size_um=448)
    views = cmu1.views(fov)
    assert [v.magnification for v in views] == list(MAGNIFICATIONS)
    for view in views:
        target = NAMED_MPP[view.magnification]
        assert view.level == 0
        assert view.factor == pytest.approx(target / 0.499, rel=2e-3)  # level px per view px
        assert view.mpp[0] == pytest.approx(target, rel=1e-3)  # effective, from Region.mpp
        assert view.size_px == (round(448 / target),) * 2  # 112, 224, 448, 896, 1792
        assert view.fov_um[0] == pytest.approx(448, rel=1e-3)
        assert view.image.shape == (round(448 / target), round(448 / target), 3)
    by_name = {v.magnification: v for v in views}
    assert by_name["40x"].enlarged and by_name["40x"].note == ENLARGED
    assert ENLARGED.split(", ")[0] in by_name["40x"].caption
    assert all(not v.enlarged and v.note is None for n, v in by_name.items() if n != "40x")
    # 20x on a 0.499 µm/px scan is 898 level-0 px reduced to 896: resampled, and said so
    assert by_name["20x"].size_px == (896, 896) and by_name["20x"].row()["resampling"] == "÷ 1.002"
    assert by_name["20x"].mpp[0] == pytest.approx(0.499 * 898 / 896)
    caption = by_name["2.5x"].caption.splitlines()
    assert caption[:3] == ["2.5x · 4.00 µm/px", f"112 {X} 112 px", "level 0 ÷ 8.018"]
    assert by_name["40x"].resampling == f"level 0 (0.50 µm/px) enlarged 1.996{X}"
    assert cmu1.scan == "20x"


def test_pyramid_views_come_from_the_right_level(pyramid: SlideExplorer) -> None:
    """0.5 µm/px, downsamples 1, 4, 16: 5x is level 1 as stored, 2.5x level 1 halved, 10x level 0 halved."""
    fov = field_of_view(pyramid.slide, point=(1600, 1200), size_um=448)
    got = {v.magnification: (v.level, v.factor, v.mpp, v.size_px) for v in pyramid.views(fov, patches=False)}
    assert got == {
        "2.5x": (1, 2.0, (4.0, 4.0), (112, 112)),
        "5x": (1, 1.0, (2.0, 2.0), (224, 224)),
        "10x": (0, 2.0, (1.0, 1.0), (448, 448)),
        "20x": (0, 1.0, (0.5, 0.5), (896, 896)),
        "40x": (0, 0.5, (0.25, 0.25), (1792, 1792)),
    }
    five = pyramid.view(fov, "5x", patches=False)
    assert five.resampling == "level 1 (2.00 µm/px) as stored" and not five.enlarged
    assert five.origin == (1152, 752)  # 1600 - 448, 1200 - 448, on level 1's pixel grid
    # as stored means exactly the level's pixels
    np.testing.assert_array_equal(five.image, pyramid.slide.level_array(1)[188:188 + 224, 288:288 + 224])
    assert pyramid.view(fov, "40x", patches=False).note == ENLARGED


def test_view_size_follows_the_field_in_um(pyramid: SlideExplorer) -> None:
    fov = field_of_view(pyramid.slide, point=(1600, 1200), size_um=(300, 150))
    assert fov.size_level0 == (600, 300)
    assert pyramid.view(fov, "5x", patches=False).image.shape == (75, 150, 3)
    assert pyramid.view(fov, "20x", patches=False).size_px == (600, 300)
    box = field_of_view(pyramid.slide, box=(100, 200, 548, 424))  # level-0 px
    assert box.size_um == (224.0, 112.0)
    assert pyramid.view(box, "10x", patches=False).size_px == (224, 112)
    with pytest.raises(ValueError, match="more than 4096 px"):
        pyramid.view(field_of_view(pyramid.slide, point=(1600, 1200), size_um=1100), "40x")


def test_points_and_boxes_in_um_are_world_coordinates(pyramid: SlideExplorer) -> None:
    """World µm of the slide layer: level-0 pixel x is centred at x * mpp, so x = um / mpp + 0.5."""
    slide = pyramid.slide
    in_px = field_of_view(slide, point=(1600, 1200), size_um=448)
    in_um = field_of_view(slide, point=(799.75, 599.75), size_um=448, units="um")
    assert in_um == in_px
    np.testing.assert_allclose(in_px.box_um(), [575.75, 375.75, 1023.75, 823.75])
    np.testing.assert_allclose(in_px.box_um(translate=(10, 20)), [595.75, 385.75, 1043.75, 833.75])
    box = field_of_view(slide, box=(575.75, 375.75, 1023.75, 823.75), units="um")
    np.testing.assert_allclose(box.box_level0, [1152, 752, 2048, 1648])
    with pytest.raises(ValueError, match="off the slide"):
        field_of_view(slide, point=(5000, 10))
    with pytest.raises(ValueError, match="off the slide"):
        field_of_view(slide, box=(-100, -100, -10, -10))
    with pytest.raises(ValueError, match="exactly one"):
        field_of_view(slide, point=(1, 1), box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="units"):
        field_of_view(slide, point=(1, 1), units="mm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        with Slide(BOXES.path) as no_mpp, pytest.raises(MissingMppError, match=r"boxes\.tiff"):
            SlideExplorer(no_mpp)


def test_footprint_by_hand(pyramid: SlideExplorer) -> None:
    """A 5x patch of 448 µm is 896 level-0 px at 0.5 µm/px; its 4 x 4 crops are 224 px apart."""
    footprint = pyramid.footprint((1600, 1200))
    np.testing.assert_array_equal(footprint.student, [1152, 752, 2048, 1648])
    assert footprint.crops.shape == (16, 4) and footprint.crops_per_side == 4
    for k, (x0, y0, x1, y1) in enumerate(footprint.crops):  # row-major
        row, col = divmod(k, 4)
        assert (x0, y0) == (1152 + 224 * col, 752 + 224 * row)
        assert (x1 - x0, y1 - y0) == (224, 224)
    np.testing.assert_allclose(footprint.student_um(), [575.75, 375.75, 1023.75, 823.75])
    crops_um = footprint.crops_um()
    np.testing.assert_allclose(crops_um[5], [687.75, 487.75, 799.75, 599.75])  # row 1, col 1
    np.testing.assert_allclose(crops_um[:, 2] - crops_um[:, 0], 112)  # 224 px at 0.5 µm/px
    # the same point in world µm
    np.testing.assert_array_equal(pyramid.footprint((799.75, 599.75), units="um").crops, footprint.crops)
    # the patch origin sits on the grid of level 1, which the 5x student reads (downsample 4)
    assert pyramid.footprint((1601, 1203)).student[0] % 4 == 0


def test_footprint_on_cmu1_follows_the_tiling_geometry(cmu1: SlideExplorer) -> None:
    """0.499 µm/px: the 5x patch is 897.8 level-0 px and crops start 0, 224, 449, 673 px in."""
    footprint = cmu1.footprint((1110, 1480))
    x0, y0, x1, _ = footprint.student
    assert x1 - x0 == pytest.approx(224 * 2.0 / 0.499)
    np.testing.assert_array_equal(footprint.crops[:4, 0] - x0, [0, 224, 449, 673])
    np.testing.assert_allclose(footprint.student_um()[:2], ((x0 - 0.5) * 0.499, (y0 - 0.5) * 0.499))


def test_patch_counts_grow_about_4x_per_step(pyramid: SlideExplorer, monkeypatch) -> None:
    counts = pyramid.patch_counts()
    assert list(counts) == list(MAGNIFICATIONS)
    values = [counts[m] for m in MAGNIFICATIONS]
    assert values == sorted(values) and values[0] >= 1
    # each step halves the µm per pixel: 4x the patches, a little fewer at the tissue's edges
    for coarse, fine in itertools.pairwise(MAGNIFICATIONS[1:]):
        assert 2.5 <= counts[fine] / counts[coarse] <= 5, counts
    # the 5x student sees about 16x fewer patches than the 20x teacher
    assert 8 <= counts["20x"] / counts["5x"] <= 16, counts
    # 40x on a 20x scan is geometry: 224 px at 0.25 µm/px = 112 level-0 px, no pixel read
    assert counts["40x"] == len(pyramid.grid(0.25))
    assert pyramid.grid(0.25).patch_size_level0 == 112
    # cached: asking again computes nothing
    monkeypatch.setattr(explorer, "patch_grid", lambda *a, **k: pytest.fail("recomputed"))
    assert pyramid.patch_counts() == counts
    fov = field_of_view(pyramid.slide, point=(1600, 1200))
    assert [v.patches for v in pyramid.views(fov)] == values


def test_layout_puts_each_view_at_its_physical_size(pyramid: SlideExplorer) -> None:
    slide = pyramid.slide
    fov = field_of_view(slide, point=(1600, 1200), size_um=448)
    views = pyramid.views(fov, patches=False)
    arrangement = explorer.layout(views, fov, slide)
    slide_right = (3200 - 0.5) * 0.5
    gap = 0.2 * 448
    lefts = [p.box[0] for p in arrangement.panels]
    np.testing.assert_allclose(lefts, slide_right + 2 * gap + np.arange(5) * (448 + gap))
    for panel in arrangement.panels:
        m = panel.view.mpp[0]
        assert panel.scale == (m, m)
        assert panel.translate == pytest.approx((375.75 + m / 2, panel.box[0] + m / 2))
        np.testing.assert_allclose(panel.box[2:] - panel.box[:2], 448)
        assert panel.caption_at == (panel.box[3], panel.box[0])
    assert f"448 {X} 448 µm field at 5 magnifications" in arrangement.title
    outlines = arrangement.outlines(pyramid.footprint(fov.centre))
    kinds = [o.kind for o in outlines]
    assert kinds.count("student") == 2 and kinds.count("teacher") == 32 and "field" not in kinds
    # the field is the student patch, so its outline on the 5x picture is the picture's edge
    on_five = [o for o in outlines if o.label.startswith("student input")]
    np.testing.assert_allclose(on_five[0].box, arrangement.panel("5x").box)
    on_twenty = [o.box for o in outlines if o.kind == "teacher"][16:]
    np.testing.assert_allclose(on_twenty[0][:2], arrangement.panel("20x").box[:2])
    np.testing.assert_allclose(on_twenty[5][:2] - on_twenty[0][:2], 112)
    # a smaller field shows the field box on the slide, and no outline that would not fit a picture
    small = field_of_view(slide, point=(1600, 1200), size_um=128)
    small_outlines = explorer.layout(pyramid.views(small, patches=False), small, slide).outlines(
        pyramid.footprint(small.centre)
    )
    assert [o.kind for o in small_outlines].count("field") == 1 and len(small_outlines) == 18


def test_explorer_for_is_shared(pyramid_path: Path) -> None:
    assert explorer.explorer_for(pyramid_path) is explorer.explorer_for(str(pyramid_path))
    assert explorer.explorer_for(pyramid_path, mpp=0.25) is not explorer.explorer_for(pyramid_path)
    assert explorer.explorer_for(pyramid_path, mpp=0.25).scan == "40x"
