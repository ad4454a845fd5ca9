"""The slide store: metadata, pixels equal to OpenSlide, laziness, mpp reads, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings

import numpy as np
import openslide
import pytest
from PIL import Image

from cases import BAD_CASES, BOXES, CMU1, GOOD_CASES, SLIDES, Case
from napari_xmag.slide import (
    MissingMppError,
    MissingMppWarning,
    Slide,
    SlideOpenError,
    SlideReadError,
    _rgba_to_rgb,
    parse_mpp,
)


def open_case(case: Case) -> Slide:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        return Slide(case.path)


def reference(osr: openslide.OpenSlide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """OpenSlide's own read of level pixels [y:y+h, x:x+w], composited onto white."""
    ds = osr.level_downsamples[level]
    rgba = osr.read_region((round(x * ds), round(y * ds)), level, (w, h))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.name)
def test_metadata(case: Case) -> None:
    with open_case(case) as slide:
        assert slide.vendor == case.vendor
        assert slide.level_dimensions == case.level_dimensions
        assert slide.name == case.name
        assert slide.objective_power == case.objective_power
        assert set(slide.associated_images) == set(case.associated)
        assert slide.mpp == (pytest.approx(case.mpp) if case.mpp else None)
        assert all(lv.tile_width == lv.tile_height == case.tile for lv in slide.levels)
        assert [a.shape for a in slide.pyramid] == [(h, w, 3) for w, h in case.level_dimensions]
        assert all(a.chunksize[:2] == (min(case.tile, a.shape[0]), min(case.tile, a.shape[1]))
                   for a in slide.pyramid)


def test_associated_image_is_rgb() -> None:
    with Slide(CMU1.path) as slide:
        label = slide.associated_image("label")
        assert label.shape == (463, 387, 3) and label.dtype == np.uint8
        with pytest.raises(KeyError, match="no associated image 'nope'"):
            slide.associated_image("nope")


def random_windows(rng: np.random.Generator, w: int, h: int, n: int) -> list[tuple[int, int, int, int]]:
    """Random windows plus ones that touch the right edge, the bottom edge and the corner."""
    out = []
    for _ in range(n):
        ww, hh = int(rng.integers(1, min(w, 700) + 1)), int(rng.integers(1, min(h, 700) + 1))
        out.append((int(rng.integers(0, w - ww + 1)), int(rng.integers(0, h - hh + 1)), ww, hh))
    ew, eh = min(w, 97), min(h, 53)
    out += [(w - ew, 0, ew, eh), (0, h - eh, ew, eh), (w - ew, h - eh, ew, eh), (0, 0, w, h)]
    return out


@pytest.mark.parametrize("level", [0, 1, 2])
def test_pixels_equal_openslide_on_a_real_pyramid(pyramid_path, level: int) -> None:
    """Levels 1, 4, 16 of real JPEG tissue: every window equals one OpenSlide read of it."""
    rng = np.random.default_rng(level)
    with Slide(pyramid_path) as slide, openslide.OpenSlide(pyramid_path) as osr:
        w, h = slide.level_dimensions[level]
        for x, y, ww, hh in random_windows(rng, w, h, 12):
            ours = slide.pyramid[level][y : y + hh, x : x + ww].compute()
            np.testing.assert_array_equal(ours, reference(osr, level, x, y, ww, hh))


def test_pixels_equal_openslide_cmu1(cmu1_rgb) -> None:
    rng = np.random.default_rng(7)
    with Slide(CMU1.path) as slide, openslide.OpenSlide(CMU1.path) as osr:
        for x, y, ww, hh in random_windows(rng, 2220, 2967, 12):
            ours = np.asarray(slide.pyramid[0][y : y + hh, x : x + ww])
            np.testing.assert_array_equal(ours, reference(osr, 0, x, y, ww, hh))
        np.testing.assert_array_equal(slide.pyramid[0].compute(), cmu1_rgb)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_pixels_equal_openslide_boxes(level: int) -> None:
    """boxes.tiff has downsamples 4.016 and 8.086: OpenSlide places such a level's pixels
    at level-0 coordinates with sub-pixel offsets, so each native tile is read from its own
    level-0 origin, and a window equals the tiles it touches read by OpenSlide one by one."""
    rng = np.random.default_rng(level)
    with open_case(BOXES) as slide, openslide.OpenSlide(BOXES.path) as osr:
        w, h = slide.level_dimensions[level]
        t = BOXES.tile
        expected = np.zeros((h, w, 3), np.uint8)
        for ty in range(0, h, t):
            for tx in range(0, w, t):
                tile = reference(osr, level, tx, ty, min(t, w - tx), min(t, h - ty))
                expected[ty : ty + t, tx : tx + t] = tile
        if level < 2:  # integer downsample: also equal to one OpenSlide read of the level
            np.testing.assert_array_equal(expected, reference(osr, level, 0, 0, w, h))
        for x, y, ww, hh in random_windows(rng, w, h, 12):
            np.testing.assert_array_equal(
                slide.pyramid[level][y : y + hh, x : x + ww].compute(), expected[y : y + hh, x : x + ww]
            )


def test_level_array_indexing_matches_numpy(pyramid_path) -> None:
    with Slide(pyramid_path) as slide:
        level = slide.level_array(1)
        full = np.asarray(level)
        for key in [
            (5,), (slice(10, 300, 3), slice(None, None, -1)), (Ellipsis, 1), (-1, -1), (slice(5, 5),),
            (slice(200, 100), 3), (np.int64(2), slice(0, 10), slice(0, 2)),
        ]:
            np.testing.assert_array_equal(level[key], full[key])
        with pytest.raises(IndexError):
            level[10_000]


def test_transparency_composites_onto_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128], [200, 100, 0, 51]]], np.uint8)
    expected = np.array([[[10, 20, 30], [255, 255, 255], [127, 127, 127], [244, 224, 204]]], np.uint8)
    np.testing.assert_array_equal(_rgba_to_rgb(rgba), expected)


def test_reads_only_the_tiles_a_view_touches(pyramid_path) -> None:
    with Slide(pyramid_path) as slide:
        pyramid = slide.pyramid
        assert slide.tile_reads == 0  # building the pyramid reads nothing
        # 240 px tiles: x 230..490 spans columns 0-2, y 10..20 spans row 0 -> 3 tiles
        pyramid[0][10:20, 230:490].compute()
        assert slide.tile_reads == 3
        pyramid[1][0:240, 0:240].compute()  # exactly one tile
        assert slide.tile_reads == 4
        pyramid[0][479:481, 479:481].compute()  # a 2x2 corner shared by four tiles
        assert slide.tile_reads == 8


def test_concurrent_reads_are_consistent(pyramid_path) -> None:
    with Slide(pyramid_path) as slide:
        level = slide.level_array(0)
        expected = np.asarray(level)
        rng = np.random.default_rng(0)
        windows = random_windows(rng, expected.shape[1], expected.shape[0], 40)
        errors: list[BaseException] = []

        def worker(chunk):
            try:
                for x, y, w, h in chunk:
                    np.testing.assert_array_equal(level[y : y + h, x : x + w], expected[y : y + h, x : x + w])
            except BaseException as err:  # collected and re-raised in the main thread
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(windows[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]


def test_one_shared_bounded_cache_released_with_the_last_slide() -> None:
    # a fresh interpreter: other tests keep slides open on purpose (napari layers, caches)
    script = f"""
from napari_xmag.slide import Slide, open_slides, shared_tile_cache
with Slide({str(CMU1.path)!r}) as a:
    cache = shared_tile_cache()
    with Slide({str(CMU1.path)!r}) as b:
        assert shared_tile_cache() is cache  # both handles share one cache
        b.pyramid[0][:10, :10].compute()
    assert shared_tile_cache() is cache  # still in use by a
assert not open_slides()
assert shared_tile_cache() is not cache  # every slide closed: the cache is let go
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr


def test_read_region_at_an_mpp_on_a_pyramid(pyramid_path) -> None:
    with Slide(pyramid_path) as slide, openslide.OpenSlide(pyramid_path) as osr:
        # 2.0 µm/px on a 0.5 µm/px slide is level 1 (downsample 4) exactly: no resampling
        region = slide.read_region(960, 480, 224, mpp="5x")
        assert (region.level, region.scale, region.mpp) == (1, (1.0, 1.0), (2.0, 2.0))
        np.testing.assert_array_equal(region.image, reference(osr, 1, 240, 120, 224, 224))
        # 1.0 µm/px: level 0 read at 448 px and reduced by 2 with Lanczos
        region = slide.read_region(100, 200, (224, 112), mpp=1.0)
        assert region.level == 0 and region.scale == (2.0, 2.0) and region.mpp == (1.0, 1.0)
        source = Image.fromarray(reference(osr, 0, 100, 200, 448, 224))
        expected = np.asarray(source.resize((224, 112), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(region.image, expected)


def test_read_region_reports_the_effective_mpp() -> None:
    with Slide(CMU1.path) as slide:
        region = slide.read_region(0, 0, 224, mpp=2.0)
        # 0.499 µm/px: 224 px at 2.0 µm/px cover 897.8 px, read as 898 and reduced
        assert region.level == 0
        assert region.scale == (898 / 224, 898 / 224)
        assert region.mpp == pytest.approx((0.499 * 898 / 224,) * 2)
        assert region.image.shape == (224, 224, 3)
        assert slide.best_level_for_mpp("20x") == (0, pytest.approx(0.5 / 0.499))


def test_read_region_outside_the_slide_is_white() -> None:
    with Slide(CMU1.path) as slide:
        region = slide.read_region(2220 - 50, 2967 - 50, 100, level=0)
        assert (region.image[50:, :] == 255).all() and (region.image[:, 50:] == 255).all()
        assert not (region.image[:50, :50] == 255).all()


def test_best_level_prefers_the_coarsest_level_that_is_fine_enough(pyramid_path) -> None:
    with Slide(pyramid_path) as slide:
        assert slide.best_level_for_mpp(0.5) == (0, 1.0)
        assert slide.best_level_for_mpp(1.9) == (0, pytest.approx(3.8))
        assert slide.best_level_for_mpp(2.0) == (1, 1.0)
        assert slide.best_level_for_mpp(10.0) == (2, pytest.approx(1.25))
        assert slide.best_level_for_mpp(0.25) == (0, 0.5)  # finer than the scan: enlarged


def test_missing_mpp_warns_and_stays_unknown() -> None:
    with pytest.warns(MissingMppWarning, match=r"boxes\.tiff.*default DPI"):
        slide = Slide(BOXES.path)
    with slide:
        assert slide.mpp is None and slide.mpp_x is None and slide.mpp_source is None
        assert slide.summary()["mpp_x"] is None and "magnifications" not in slide.summary()
        with pytest.raises(MissingMppError, match=r"boxes\.tiff.*mpp override"):
            slide.read_region(0, 0, 10, mpp=2.0)
        # pixels are still readable by level
        assert slide.read_region(0, 0, 10, level=0).image.shape == (10, 10, 3)


def test_mpp_override() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an override must not warn
        slide = Slide(BOXES.path, mpp=0.25)
    with slide:
        assert (slide.mpp_x, slide.mpp_y, slide.mpp_source) == (0.25, 0.25, "override")
        assert slide.best_level_for_mpp("20x") == (1, 1.0)


@pytest.mark.parametrize("case", BAD_CASES, ids=str)
def test_bad_files_raise_one_clear_error(case: Case) -> None:
    """Unopenable files fail at open; a file whose tiles are corrupt opens and fails at its
    first pixel read, never with blank pixels. Either way the message names file and cause."""
    if case.open_error:
        with pytest.raises(SlideOpenError, match=case.open_error) as info:
            Slide(case.path)
    else:
        with Slide(case.path) as slide, pytest.raises(SlideReadError, match=case.read_error) as info:
            slide.check_readable()
    assert str(case.path) in str(info.value)


def test_corrupt_tiles_raise_a_clear_error_not_blank_pixels() -> None:
    path = SLIDES / "unreadable.svs"
    with Slide(path) as slide:
        with pytest.raises(SlideReadError, match=r"unreadable\.svs.*Bogus marker length"):
            slide.check_readable()
        with pytest.raises(SlideReadError, match="Bogus marker length"):
            slide.pyramid[0].compute()


def test_missing_file_and_folder(tmp_path) -> None:
    with pytest.raises(SlideOpenError, match="no such file"):
        Slide(tmp_path / "nope.svs")
    with pytest.raises(SlideOpenError, match="is a folder"):
        Slide(tmp_path)


def test_closed_slide_refuses_reads(pyramid_path) -> None:
    slide = Slide(pyramid_path)
    level = slide.pyramid[0]
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        level[:10, :10].compute()


@pytest.mark.parametrize(
    ("value", "mpp"), [("5x", 2.0), ("20X", 0.5), ("40x", 0.25), (2.0, 2.0), ("0.5", 0.5)]
)
def test_parse_mpp(value, mpp) -> None:
    assert parse_mpp(value) == mpp


@pytest.mark.parametrize("value", ["7y", -1.0, 0, float("nan")])
def test_parse_mpp_refuses_nonsense(value) -> None:
    with pytest.raises(ValueError, match=r"^resolution .*µm/px"):
        parse_mpp(value)
