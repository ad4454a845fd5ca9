"""Map geometry: scale and translate by hand, cells on level-0 pixel edges, averaging, labels."""

from __future__ import annotations

import numpy as np
import pytest

from feature_sets import OVERLAP_MEANS, feature_set, grid_coords
from napari_xmag import maps
from napari_xmag.features import FeatureSet
from napari_xmag.maps import MapError, MapGrid


# ---- geometry -------------------------------------------------------------------------------
def test_scale_and_translate_by_hand() -> None:
    """CMU-1 numbers: 0.499 µm/px, 224 px at 2.0 µm/px = 897.8 level-0 px, stride 112 px; the
    grid's origins are rounded to 449 px steps (round(112 * 4.008))."""
    coords = grid_coords(np.array([449, 898, 1347]), np.array([898, 1347]))
    fs = feature_set(coords, slide_mpp=0.499, mpp=2.0, patch=224, stride=112)
    grid = maps.grid_for_features(fs)
    assert (grid.step_x, grid.step_y) == (449.0, 449.0)  # read from the coords, not 448.9
    assert grid.span == (2, 2)  # 897.8 / 449 -> the centres of 2 cells per axis
    assert grid.shape == (3, 4)  # 2 origins + 1, 3 origins + 1
    np.testing.assert_allclose(grid.scale, (449 * 0.499, 449 * 0.499))  # 224.051 µm
    # translate = (x0 - 0.5) * mpp + 0.5 * step * mpp = (449 - 0.5 + 224.5) * 0.499
    np.testing.assert_allclose(grid.translate, (1122 * 0.499, 673 * 0.499))
    np.testing.assert_allclose(grid.translate, (559.878, 335.827))
    rows, cols = grid.cells(coords)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [0, 1, 2, 0, 1, 2]
    assert grid.cell_bounds(1, 2) == (449 + 2 * 449, 898 + 449, 449 + 3 * 449, 898 + 2 * 449)


def test_cell_edges_land_on_level0_pixel_edges() -> None:
    """Data pixel i of a map is drawn centred at translate + i * scale: its left edge, at
    translate - scale / 2 + i * scale, is level-0 x0 + i * step, i.e. (x0 + i step - 0.5) * mpp."""
    grid = MapGrid(x0=449, y0=898, step_x=449, step_y=449, patch_x=897.8, patch_y=897.8, rows=3, cols=4,
                   slide_mpp=0.499)
    for i in range(4):
        left = grid.translate[1] - grid.scale[1] / 2 + i * grid.scale[1]
        assert left == pytest.approx((449 + i * 449 - 0.5) * 0.499)
    back = MapGrid.from_transform(grid.scale, grid.translate, 0.499, grid.shape)
    assert (back.x0, back.y0, back.step_x) == pytest.approx((449, 898, 449))


def test_trident_attributes_give_the_same_grid() -> None:
    """A TRIDENT file has patch_size_level0 and overlap (target px), no stride or slide mpp."""
    coords = grid_coords(np.array([0, 100, 200]), np.array([0, 100]))
    fs = FeatureSet(coords, np.zeros((6, 4), np.float32), {},
                    {"patch_size": 256, "patch_size_level0": 200, "overlap": 128, "name": "t"})
    with pytest.raises(MapError, match="slide µm/px"):
        maps.grid_for_features(fs)  # a missing mpp is said, not guessed
    grid = maps.grid_for_features(fs, slide_mpp=0.25)
    assert (grid.step_x, grid.patch_x, grid.span, grid.shape) == (100.0, 200.0, (2, 2), (3, 4))


def test_off_grid_coords_are_refused(overlap) -> None:
    grid = maps.grid_for_features(overlap)
    with pytest.raises(MapError, match=r"patch \(95, 30\) is not on the map's grid"):
        grid.cells(np.array([[95, 30]]))
    with pytest.raises(MapError, match="regular grid"):
        maps.build_grid(np.array([[0, 0], [100, 0], [130, 0]]), 100, 100, 0.5)


# ---- averaging ------------------------------------------------------------------------------
def test_overlapping_patches_are_averaged(overlap) -> None:
    m = maps.attention_map(overlap, overlap.coords, np.arange(9.0))
    assert m.data.shape == (4, 4) and m.data.dtype == np.float32
    np.testing.assert_allclose(m.data, OVERLAP_MEANS)
    np.testing.assert_allclose(m.scale, (50, 50))  # 100 level-0 px at 0.5 µm/px
    np.testing.assert_allclose(m.translate, ((30 - 0.5 + 50) * 0.5, (50 - 0.5 + 50) * 0.5))


def test_missing_patches_and_nan_values(overlap) -> None:
    keep = np.arange(9) != 4  # no centre patch
    values = np.arange(9.0)
    values[8] = np.nan  # e.g. a cosine that was not scored
    m = maps.attention_map(overlap, overlap.coords[keep], values[keep])
    assert m.data[1, 1] == pytest.approx((0 + 1 + 3) / 3)
    assert m.data[2, 2] == pytest.approx((5 + 7) / 2)  # 4 absent, 8 NaN: left out
    assert np.isnan(m.data[3, 3])  # only the NaN patch covers it
    assert m.data[0, 0] == 0.0


def test_vector_values_are_averaged_per_channel(overlap) -> None:
    grid = maps.grid_for_features(overlap)
    rows, cols = grid.cells(overlap.coords)
    v = np.stack([np.arange(9.0), 10 * np.arange(9.0)], axis=1)
    out = maps.rasterize_mean(grid, rows, cols, v)
    assert out.shape == (2, 4, 4)
    np.testing.assert_allclose(out[0], OVERLAP_MEANS)
    np.testing.assert_allclose(out[1], 10 * OVERLAP_MEANS)


def test_cells_no_patch_covers_are_empty() -> None:
    coords = np.array([[0, 0], [200, 200]])  # stride 100: a gap between them
    fs = feature_set(coords)
    m = maps.attention_map(fs, coords, np.array([1.0, 2.0]))
    assert m.data.shape == (4, 4)
    expected = np.full((4, 4), np.nan)
    expected[:2, :2], expected[2:, 2:] = 1.0, 2.0
    np.testing.assert_array_equal(m.data, expected)


def test_labels_take_the_majority() -> None:
    grid = MapGrid(x0=0, y0=0, step_x=100, step_y=100, patch_x=200, patch_y=200, rows=4, cols=4,
                   slide_mpp=0.5)
    rows, cols = np.divmod(np.arange(9), 3)
    labels = np.array([[1, 1, 2], [1, 2, 2], [3, 3, 3]]).ravel()
    out = maps.rasterize_labels(grid, rows, cols, labels)
    assert out[1, 1] == 1  # patches 1, 1, 1, 2
    assert out[1, 2] == 2  # 1, 2, 2, 2
    assert out[2, 1] == 3  # 1, 2, 3, 3
    assert out[0, 2] == 1  # 1 vs 2, equidistant centres: the smaller label
    assert out[3, 3] == 3 and out[0, 0] == 1


def test_label_ties_go_to_the_nearest_patch_centre() -> None:
    """Patches of 3 cells, 1 cell apart: cell 1 is A's centre cell and B's first."""
    grid = MapGrid(x0=0, y0=0, step_x=100, step_y=100, patch_x=300, patch_y=100, rows=1, cols=4,
                   slide_mpp=0.5)
    out = maps.rasterize_labels(grid, np.array([0, 0]), np.array([0, 1]), np.array([2, 1]))
    assert out.tolist() == [[2, 2, 1, 1]]  # cell 1: A (label 2) is nearer; cell 2: B is
