"""Tiling: tissue mask, patch grids at an exact mpp, 5x <-> 20x pairing geometry, the report."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from cases import BOXES, CMU1, GOOD_CASES, SMALL, Case
from napari_xmag.slide import MissingMppError, MissingMppWarning, Slide, SlideError
from napari_xmag.synthetic import mirrored_source, write_aperio_pyramid
from napari_xmag.tiling import (
    TissueMask,
    _hsv_saturation,
    grid_report,
    pair_geometry,
    patch_grid,
    require_patches,
    teacher_crop_coords,
    tissue_mask,
)


@pytest.fixture(scope="module")
def cmu1() -> Slide:
    with Slide(CMU1.path) as slide:
        yield slide


@pytest.fixture(scope="module")
def cmu1_mask(cmu1: Slide) -> TissueMask:
    return tissue_mask(cmu1)


def constant_source(colour: tuple[int, int, int], noise: float = 0.0):
    """A tile source of one colour, optionally with pixel noise (JPEG-like grain on glass)."""

    def source(ds: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        pixels = np.empty((h, w, 3), np.float32)
        pixels[:] = colour
        if noise:
            rng = np.random.default_rng(ds * 1_000_003 + y * 1009 + x)
            pixels += rng.normal(0, noise, (h, w, 3))
        return np.clip(pixels, 0, 255).astype(np.uint8)

    return source


# ---- tissue mask --------------------------------------------------------------------------
def test_saturation_is_skimage_hsv() -> None:
    from skimage.color import rgb2hsv

    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb[0, :3] = [(0, 0, 0), (255, 255, 255), (10, 10, 10)]
    saturation, darkest = _hsv_saturation(rgb)
    np.testing.assert_allclose(saturation, rgb2hsv(rgb)[..., 1], atol=1e-6)
    np.testing.assert_array_equal(darkest, rgb.min(axis=-1))


def test_mask_on_real_tissue(cmu1: Slide, cmu1_mask: TissueMask, cmu1_rgb: np.ndarray) -> None:
    mask = cmu1_mask
    downsample = 8.0 / 0.499
    assert mask.mpp == 8.0 and mask.downsample == pytest.approx(downsample)
    # The raster covers the whole slide: ceil(2220 / 16.03) x ceil(2967 / 16.03).
    assert mask.shape == (math.ceil(2967 / downsample), math.ceil(2220 / downsample)) == (186, 139)
    assert mask.mask.dtype == bool
    assert 0.15 < mask.tissue_fraction < 0.6  # a strip of skin on glass (seen: 0.38)
    assert mask.tissue_area_um2 == pytest.approx(mask.mask.sum() * 64.0)
    assert 0.05 < mask.threshold < 0.5
    # Nearly every H&E-stained pixel of the full-resolution image lies inside the mask...
    rgb = cmu1_rgb.astype(np.int16)
    saturation = rgb.max(-1) - rgb.min(-1)
    stained = (saturation > 40) & (rgb[..., 1] < rgb[..., 0]) & (rgb[..., 1] < rgb[..., 2] + 40)
    ys, xs = np.nonzero(stained)
    inside = mask.mask[(ys / mask.downsample).astype(int), (xs / mask.downsample).astype(int)]
    assert inside.mean() > 0.93
    # ...and the glass around the section (the image's corners) is outside it.
    assert not mask.mask[:20, :20].any() and not mask.mask[:20, -20:].any()


def test_mask_reads_only_the_coarse_level(pyramid_path: Path) -> None:
    with Slide(pyramid_path) as slide:
        before = slide.tile_reads
        mask = tissue_mask(slide)  # 8 µm/px is level 2 (downsample 16): 200x150 px, one tile
        assert slide.tile_reads - before == 1
        assert mask.shape == (150, 200) and mask.downsample == 16.0
        assert 0.15 < mask.tissue_fraction < 0.8


@pytest.mark.parametrize(
    ("colour", "noise"),
    [((255, 255, 255), 0.0), ((245, 243, 243), 3.0), ((236, 160, 196), 0.0), ((200, 120, 170), 2.0)],
    ids=["white", "noisy-glass", "pink", "noisy-purple"],
)
def test_no_tissue_gives_an_empty_mask(tmp_path: Path, colour: tuple[int, int, int], noise: float) -> None:
    path = write_aperio_pyramid(tmp_path / "blank.svs", 1200, 960, constant_source(colour, noise))
    with Slide(path) as slide:
        mask = tissue_mask(slide)
        assert mask.shape == (60, 75) and not mask.mask.any()
        assert mask.threshold is None and mask.tissue_fraction == 0.0 and mask.tissue_area_um2 == 0.0
        assert len(patch_grid(slide, "5x", mask=mask)) == 0
        assert len(patch_grid(slide, "20x", mask=mask)) == 0
        full = patch_grid(slide, "20x", mask=mask, min_tissue=0.0)
        assert len(full) == 6 * 5 and np.all(full.tissue == 0)
        report = grid_report(slide, mask, patch_grid(slide, "5x", mask=mask), full)
        assert report["patches_5x"] == 0 and report["ratio_20x_5x"] is None
        assert report["coverage_5x"] is None and report["coverage_20x"] is None


def test_slide_smaller_than_a_patch() -> None:
    with Slide(SMALL.path) as slide:  # 16x16 px of glass at 0.499 µm/px
        mask = tissue_mask(slide)
        assert mask.shape == (1, 1) and not mask.mask.any()
        assert len(patch_grid(slide, "5x", mask=mask)) == 0
        grid = patch_grid(slide, "5x", mask=mask, min_tissue=0.0)
        np.testing.assert_array_equal(grid.coords, [[0, 0]])
        assert grid.coords.dtype == np.int64 and grid.tissue.tolist() == [0.0]
        patch = slide.read_region(*grid.coords[0], grid.patch_size, mpp=grid.mpp).image
        assert patch.shape == (224, 224, 3) and (patch[150:, 150:] == 255).all()  # padded white


def test_tissue_smaller_than_a_patch(tmp_path: Path, cmu1_rgb: np.ndarray) -> None:
    """A 400 px slide of real tissue lies inside one 896 px 5x patch: its tissue is the mask's."""
    tissue = np.ascontiguousarray(cmu1_rgb[1900:2300, 700:1100])
    path = write_aperio_pyramid(tmp_path / "tiny.svs", 400, 400, mirrored_source(tissue))
    with Slide(path) as slide:
        mask = tissue_mask(slide)
        assert mask.mask.any()
        grid = patch_grid(slide, "5x", mask=mask, min_tissue=0.0)
        np.testing.assert_array_equal(grid.coords, [[0, 0]])
        assert grid.tissue[0] == pytest.approx(mask.mask.sum() / (896 / 16) ** 2)
        assert grid.tissue[0] < (400 / 896) ** 2 + 1e-9  # the rest of the patch is off the slide


@pytest.mark.parametrize("case", GOOD_CASES, ids=str)
def test_default_5x_grid_of_every_test_slide(case: Case) -> None:
    """The defaults (5x, 224 px, 25% tissue) keep the table's patch count, or say why none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        slide = Slide(case.path)
    with slide:
        if case.patches_5x is None:
            with pytest.raises(SlideError, match=case.embed_error):  # either step may say it
                require_patches(patch_grid(slide, "5x", mask=tissue_mask(slide)), slide)
            return
        grid = patch_grid(slide, "5x", mask=tissue_mask(slide))
        assert len(grid) == case.patches_5x and grid.mpp == 2.0
        assert np.all(grid.tissue >= 0.25)


def test_missing_mpp_is_said() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        slide = Slide(BOXES.path)
    with slide, pytest.raises(MissingMppError, match=r"boxes\.tiff.*mpp override"):
        tissue_mask(slide)
    with slide, pytest.raises(MissingMppError, match=r"boxes\.tiff.*mpp override"):
        patch_grid(slide, "5x", mask=TissueMask(np.ones((4, 4), bool), 8.0, 16.0))
    with Slide(BOXES.path, mpp=0.5) as slide:  # the override is the way out
        assert tissue_mask(slide).downsample == 16.0


def test_tissue_fractions_integrate_the_mask_exactly() -> None:
    rng = np.random.default_rng(3)
    raster = rng.random((23, 31)) < 0.4
    mask = TissueMask(raster, mpp=10.0, downsample=2.5)
    coords = np.array([[0, 0], [3, 7], [11, 4], [60, 40], [70, 50], [-5, -3]])
    size = 7.3  # level-0 px, so boxes start and end mid-pixel
    # Reference: overlap of each box with each mask pixel, in mask pixels.
    expected = []
    for x, y in coords / mask.downsample:
        side = size / mask.downsample
        j = np.arange(raster.shape[1])
        i = np.arange(raster.shape[0])
        over_x = np.clip(np.minimum(x + side, j + 1) - np.maximum(x, j), 0, None)
        over_y = np.clip(np.minimum(y + side, i + 1) - np.maximum(y, i), 0, None)
        expected.append((raster * over_y[:, None] * over_x[None, :]).sum() / side**2)
    np.testing.assert_allclose(mask.tissue_fractions(coords, size), expected, atol=1e-12)
    # covered_by: pixels whose centre is inside a box
    centres_x = (np.arange(raster.shape[1]) + 0.5) * mask.downsample
    centres_y = (np.arange(raster.shape[0]) + 0.5) * mask.downsample
    inside = np.zeros(raster.shape, bool)
    for x, y in coords:
        inside |= ((centres_y >= y) & (centres_y < y + size))[:, None] & (
            (centres_x >= x) & (centres_x < x + size)
        )[None, :]
    np.testing.assert_array_equal(mask.covered_by(coords, size), inside)


# ---- patch grid ---------------------------------------------------------------------------
def test_grid_at_5x_on_a_pyramid(pyramid_path: Path) -> None:
    with Slide(pyramid_path) as slide:  # 3200x2400, downsamples 1, 4, 16 at 0.5 µm/px
        grid = patch_grid(slide, "5x", min_tissue=0.0)
        assert grid.mpp == 2.0 and grid.magnification == "5x"
        assert (grid.level, grid.level_downsample) == (1, 4.0)
        assert grid.patch_size == grid.stride == 224
        assert grid.patch_size_level0 == 896.0 and grid.step_level0 == 896
        assert grid.slide_dimensions == (3200, 2400)
        xs = sorted(set(grid.coords[:, 0].tolist()))
        ys = sorted(set(grid.coords[:, 1].tolist()))
        assert xs == [0, 896, 1792, 2688] and ys == [0, 896, 1792]  # the last reach the edge
        assert len(grid) == 12 and grid.coords.dtype == np.int64
        assert np.all(grid.coords % 896 == 0) and np.all(grid.coords % 4 == 0)
        # On the level-1 pixel grid, the patch is level-1 pixels as they are.
        x, y = grid.coords[5]
        patch = slide.read_region(x, y, 224, mpp=grid.mpp)
        assert patch.scale == (1.0, 1.0)
        level_1 = slide.level_array(1)[y // 4 : y // 4 + 224, x // 4 : x // 4 + 224]
        np.testing.assert_array_equal(patch.image, level_1)
        assert grid.bounds_level0()[5].tolist() == [x, y, x + 896, y + 896]


def test_grid_at_5x_on_cmu1_with_fractional_mpp(cmu1: Slide, cmu1_mask: TissueMask) -> None:
    grid = patch_grid(cmu1, 2.0, mask=cmu1_mask, min_tissue=0.0)
    assert grid.level == 0 and grid.level_downsample == 1.0
    assert grid.patch_size_level0 == pytest.approx(224 * 2.0 / 0.499)  # 897.8
    assert grid.step_level0 == round(224 * 2.0 / 0.499) == 898
    assert sorted(set(grid.coords[:, 0].tolist())) == [0, 898, 1796]  # 3 * 897.8 >= 2220
    assert sorted(set(grid.coords[:, 1].tolist())) == [0, 898, 1796, 2694]  # 4 * 897.8 >= 2967
    assert len(grid) == 12
    kept = patch_grid(cmu1, "5x", mask=cmu1_mask)
    assert kept.min_tissue == 0.25 and 0 < len(kept) < 12 and np.all(kept.tissue >= 0.25)
    assert set(map(tuple, kept.coords)) <= set(map(tuple, grid.coords))


def test_grid_at_20x_on_cmu1(cmu1: Slide, cmu1_mask: TissueMask) -> None:
    grid = patch_grid(cmu1, "20x", mask=cmu1_mask, min_tissue=0.0)
    assert grid.mpp == 0.5 and grid.magnification == "20x" and grid.level == 0
    assert grid.patch_size_level0 == pytest.approx(224 * 0.5 / 0.499)
    assert grid.step_level0 == 224
    assert len(grid) == math.ceil((2220 - 224.45) / 224 + 1) * math.ceil((2967 - 224.45) / 224 + 1) == 10 * 14


def test_origins_snap_to_a_non_integer_level() -> None:
    with Slide(BOXES.path, mpp=0.5) as slide:  # downsamples 1, 2, 4.02, 8.09
        ds = slide.levels[2].downsample
        assert ds != round(ds)
        grid = patch_grid(slide, 0.5 * ds, patch_size=16, min_tissue=0.0, mask=tissue_mask(slide, 4.0))
        assert grid.level == 2 and grid.level_downsample == ds
        level_px = grid.coords / ds
        np.testing.assert_allclose(level_px, np.round(level_px), atol=0.5 / ds)
        assert sorted(set(np.round(level_px[:, 0]).astype(int).tolist())) == [0, 16, 32, 48, 64]


def test_half_stride_about_quadruples_the_grid(
    pyramid_path: Path, cmu1: Slide, cmu1_mask: TissueMask
) -> None:
    with Slide(pyramid_path) as slide:
        mask = tissue_mask(slide)
        full = patch_grid(slide, "20x", mask=mask, min_tissue=0.0)
        half = patch_grid(slide, "20x", stride=112, mask=mask, min_tissue=0.0)
        assert half.stride == 112 and half.step_level0 == 112 and half.patch_size_level0 == 224
        assert len(full) == 15 * 11  # ceil(3200 / 224) x ceil(2400 / 224)
        assert len(half) == 28 * 21  # 1 + ceil((3200 - 224) / 112), 1 + ceil((2400 - 224) / 112)
        assert np.all(half.coords % 112 == 0)
    kept = patch_grid(cmu1, "20x", mask=cmu1_mask)
    kept_half = patch_grid(cmu1, "20x", stride=112, mask=cmu1_mask)
    assert 3.0 < len(kept_half) / len(kept) < 4.6


def test_grid_arguments_are_checked(cmu1: Slide, cmu1_mask: TissueMask) -> None:
    with pytest.raises(ValueError, match="neither µm/px nor one of"):
        patch_grid(cmu1, "7y", mask=cmu1_mask)
    with pytest.raises(ValueError, match="stride"):
        patch_grid(cmu1, "5x", stride=0, mask=cmu1_mask)
    with pytest.raises(ValueError, match="min_tissue"):
        patch_grid(cmu1, "5x", min_tissue=25, mask=cmu1_mask)
    with pytest.raises(ValueError, match="another slide resolution"):
        patch_grid(cmu1, "5x", mask=TissueMask(cmu1_mask.mask, 8.0, 32.0))


# ---- pairing ------------------------------------------------------------------------------
def test_pairing_on_a_20x_slide(pyramid_path: Path) -> None:
    with Slide(pyramid_path) as slide:
        grid = patch_grid(slide, "5x", min_tissue=0.0)
        geometry = pair_geometry(grid, slide)
        assert geometry.crops_per_side == 4 and geometry.crops_per_patch == 16
        assert geometry.region_size == 896 and geometry.region_size_level0 == 896.0
        assert geometry.crop_size_level0 == 224.0 and geometry.teacher_level == 0
        crops = teacher_crop_coords(grid, slide)
        assert crops.shape == (12, 16, 2) and crops.dtype == np.int64
        i = int(np.flatnonzero((grid.coords == [896, 1792]).all(1))[0])
        expected = [[896 + 224 * (k % 4), 1792 + 224 * (k // 4)] for k in range(16)]
        np.testing.assert_array_equal(crops[i], expected)
        # The 896 px region, cut into crops, is the crops read one by one.
        x, y, size = geometry.region(*grid.coords[i])
        region = slide.read_region(x, y, size, mpp=0.5).image
        pieces = geometry.split(region)
        assert pieces.shape == (16, 224, 224, 3)
        for k in (0, 3, 6, 15):
            np.testing.assert_array_equal(pieces[k], slide.read_region(*crops[i, k], 224, mpp=0.5).image)


def test_pairing_on_a_40x_slide(pyramid_path: Path) -> None:
    with Slide(pyramid_path, mpp=0.25) as slide:  # the same file read as a 40x scan
        grid = patch_grid(slide, "5x", min_tissue=0.0)
        assert (grid.level, grid.level_downsample) == (1, 4.0)  # level 1 is 1.0 µm/px
        assert grid.patch_size_level0 == 1792.0 and grid.step_level0 == 1792
        assert np.all(grid.coords % 1792 == 0)
        geometry = pair_geometry(grid, slide, teacher_mpp="20x")
        assert geometry.teacher_level == 0 and geometry.crop_size_level0 == 448.0
        assert geometry.region_size == 896 and geometry.region_size_level0 == 1792.0
        crops = teacher_crop_coords(grid, slide)
        offsets = crops - grid.coords[:, None, :]
        np.testing.assert_array_equal(offsets[0], [[448 * (k % 4), 448 * (k // 4)] for k in range(16)])
        assert np.all(offsets == offsets[0])


def test_pairing_generalises_and_refuses_fractions(cmu1: Slide, cmu1_mask: TissueMask) -> None:
    grid_5x = patch_grid(cmu1, "5x", mask=cmu1_mask)
    grid_10x = patch_grid(cmu1, "10x", mask=cmu1_mask)
    assert pair_geometry(grid_10x, cmu1).crops_per_side == 2
    assert pair_geometry(grid_5x, cmu1, teacher_mpp=1.0, crop_size=112).crops_per_side == 4
    with pytest.raises(ValueError, match="whole number"):
        teacher_crop_coords(grid_5x, cmu1, crop_size=200)  # 448 µm / 100 µm = 4.48
    with pytest.raises(ValueError, match="whole number"):
        pair_geometry(grid_5x, cmu1, teacher_mpp=4.0, crop_size=224)  # 0.5 crops
    # On CMU-1 (0.499 µm/px) the crops step 224.45 level-0 px, rounded to pixels.
    crops = teacher_crop_coords(grid_5x, cmu1)
    offsets = crops[0] - grid_5x.coords[0]
    assert offsets[:4, 0].tolist() == [0, 224, 449, 673] and offsets[::4, 1].tolist() == [0, 224, 449, 673]
    with Slide(CMU1.path, mpp=0.25) as other, pytest.raises(ValueError, match="another slide resolution"):
        grid_report(other, cmu1_mask, grid_5x, grid_5x)
    with Slide(SMALL.path) as small, pytest.raises(ValueError, match="grid was built for a"):
        pair_geometry(grid_5x, small)


# ---- report -------------------------------------------------------------------------------
def test_report_on_cmu1(cmu1: Slide, cmu1_mask: TissueMask) -> None:
    grid_5x = patch_grid(cmu1, "5x", mask=cmu1_mask)
    grid_20x = patch_grid(cmu1, "20x", mask=cmu1_mask)
    report = grid_report(cmu1, cmu1_mask, grid_5x, grid_20x)
    assert report["patches_5x"] == len(grid_5x) and report["patches_20x"] == len(grid_20x)
    assert report["ratio_20x_5x"] == pytest.approx(len(grid_20x) / len(grid_5x))
    assert 11 <= report["ratio_20x_5x"] <= 16  # seen: 54 / 4 = 13.5
    assert report["tissue_fraction"] == cmu1_mask.tissue_fraction
    assert 0.5 < report["coverage_5x"] <= report["coverage_20x"] <= 1.0  # finer grids hug tissue
    assert (report["mpp_5x"], report["mpp_20x"], report["level_5x"]) == (2.0, 0.5, 0)
    loose = grid_report(
        cmu1,
        cmu1_mask,
        patch_grid(cmu1, "5x", mask=cmu1_mask, min_tissue=0.01),
        patch_grid(cmu1, "20x", mask=cmu1_mask, min_tissue=0.01),
    )
    assert loose["coverage_5x"] >= 0.99 and loose["coverage_20x"] >= 0.99
    everything = patch_grid(cmu1, "5x", mask=cmu1_mask, min_tissue=0.0)
    assert cmu1_mask.coverage(everything.coords, everything.patch_size_level0) == 1.0


def test_a_mask_of_another_slide_is_refused(cmu1: Slide, cmu1_mask: TissueMask, pyramid_path: Path) -> None:
    with Slide(pyramid_path, mpp=0.499) as other, pytest.raises(ValueError, match=r"mask is \(186, 139\) px"):
        patch_grid(other, "5x", mask=cmu1_mask)
