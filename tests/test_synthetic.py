"""Written pyramids read back through OpenSlide as the Aperio slides they imitate."""

from __future__ import annotations

import hashlib

import numpy as np
import openslide
import pytest

from napari_xmag.synthetic import (
    mirrored_source,
    sample_slide_path,
    tissue_image,
    write_aperio_pyramid,
    write_sample_slide,
)


def test_pyramid_reads_back_as_aperio(tmp_path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (100, 130, 3), dtype=np.uint8)
    path = write_aperio_pyramid(tmp_path / "a.svs", 1000, 960, mirrored_source(image, (1, 4)),
                                downsamples=(1, 4), tile=128, mpp=0.25, app_mag=40)
    with openslide.OpenSlide(path) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert osr.level_dimensions == ((1000, 960), (250, 240))
        assert osr.level_downsamples == (1.0, 4.0)
        assert float(osr.properties["openslide.mpp-x"]) == 0.25
        assert osr.properties["openslide.objective-power"] == "40"
        assert osr.properties["openslide.level[0].tile-width"] == "128"
    assert [p.name for p in tmp_path.iterdir()] == ["a.svs"]  # no temp file left


def test_mirrored_source_is_continuous() -> None:
    image = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    tile = mirrored_source(image, (1,))(1, 0, 0, 8, 6)
    np.testing.assert_array_equal(tile[:4, :3], image)
    np.testing.assert_array_equal(tile[:4, 3:6], image[:, ::-1])  # mirrored across the seam
    np.testing.assert_array_equal(tile[4:8, :3], image[::-1])


def test_failed_write_leaves_nothing(tmp_path) -> None:
    def bad_source(ds, y, x, h, w):
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_aperio_pyramid(tmp_path / "b.svs", 500, 500, bad_source)
    assert list(tmp_path.iterdir()) == []


def test_tissue_image_looks_like_a_section() -> None:
    image = tissue_image(1024, 768, seed=3)
    glass = (image.min(-1) > 225).mean()
    purple = ((image[..., 2] > image[..., 1] + 40) & (image[..., 0] < 140)).mean()
    assert 0.1 < glass < 0.8 and purple > 0.002
    np.testing.assert_array_equal(image, tissue_image(1024, 768, seed=3))
    assert not np.array_equal(image, tissue_image(1024, 768, seed=4))


def test_sample_slide_is_deterministic(tmp_path) -> None:
    a = write_sample_slide(tmp_path / "a.svs", 960, 720, seed=1)
    b = write_sample_slide(tmp_path / "b.svs", 960, 720, seed=1)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_sample_slide_is_cached(tmp_path) -> None:
    path = sample_slide_path(tmp_path)
    stamp = path.stat().st_mtime_ns
    assert sample_slide_path(tmp_path) == path and path.stat().st_mtime_ns == stamp
    with openslide.OpenSlide(path) as osr:
        assert osr.level_dimensions == ((8192, 6144), (2048, 1536), (512, 384))
        assert osr.properties["openslide.mpp-x"] == "0.5"
