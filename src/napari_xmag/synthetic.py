"""Write Aperio-style tiled JPEG pyramids, and the procedural tissue-like sample slide.

Used by the sample-data contribution (:func:`sample_slide_path`: made once into the user
cache), the tests' fixtures and the benchmarks, so that everything is read back through
OpenSlide exactly as a scanner's file would be.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from ._atomic import ANY_FILE, atomic_path
from ._paths import user_cache_dir

__all__ = [
    "SAMPLE_NAME",
    "mirrored_source",
    "sample_slide_path",
    "tissue_image",
    "tissue_regions",
    "write_aperio_pyramid",
    "write_sample_slide",
]

SAMPLE_NAME = "xmag-sample-v1.svs"  # bump the version when the generator's output changes

#: ``source(level_downsample, y, x, h, w)`` returns level pixels (h, w, 3) uint8.
TileSource = Callable[[int, int, int, int, int], np.ndarray]


def write_aperio_pyramid(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    source: TileSource,
    *,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 240,
    mpp: float | None = 0.5,
    app_mag: float | None = 20,
    quality: int = 80,
    overwrite: bool = False,
) -> Path:
    """Write a tiled-JPEG pyramid that OpenSlide reads as an Aperio SVS.

    Tiles are produced one at a time from ``source``, so a 40000 px slide never has to be
    in memory at once. The file appears only when complete (temp name, then rename); a file
    already at ``path`` is replaced only with ``overwrite``.
    """
    path = Path(path)
    fields = [f"AppMag = {app_mag:g}" if app_mag else None, f"MPP = {mpp:g}" if mpp else None]
    extra = "".join(f"|{f}" for f in fields if f)
    head = "Aperio Image Library v12.0.15 \r\n"
    big = width * height * 3 > 2**31
    target = atomic_path(path, ANY_FILE, overwrite=overwrite)
    with target as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tif:
        for i, ds in enumerate(downsamples):
            w, h = width // ds, height // ds
            if i == 0:
                desc = (f"{head}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
                        f" JPEG/RGB Q={quality}{extra}")
            else:
                desc = f"{head}{width}x{height} -> {w}x{h} - ({tile}x{tile}) JPEG/RGB Q={quality}{extra}"
            tif.write(
                _tiles(source, ds, w, h, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                description=desc,
                metadata=None,
            )
    return path


def _tiles(source: TileSource, ds: int, w: int, h: int, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            th, tw = min(tile, h - y), min(tile, w - x)
            pixels = source(ds, y, x, th, tw)
            if (th, tw) != (tile, tile):  # TIFF tiles are full size; pad edges with white
                padded = np.full((tile, tile, 3), 255, np.uint8)
                padded[:th, :tw] = pixels
                pixels = padded
            yield pixels


def _downsampled(image: np.ndarray, ds: int) -> np.ndarray:
    if ds == 1:
        return image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((max(1, w // ds), max(1, h // ds)), Image.Resampling.BOX))


def mirrored_source(image: np.ndarray, downsamples: Sequence[int] = (1, 4, 16)) -> TileSource:
    """A tile source that repeats ``image`` with mirroring, so the seams are continuous.

    Turns a small region of real tissue (CMU-1) into a slide of any size with real
    JPEG-decoding costs.
    """
    levels = {ds: _downsampled(image, ds) for ds in downsamples}

    def source(ds: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        base = levels[ds]
        bh, bw = base.shape[:2]
        ys = np.arange(y, y + h)
        xs = np.arange(x, x + w)
        # Period 2*n: forward copy then a mirrored copy.
        yi = ys % (2 * bh)
        yi = np.where(yi < bh, yi, 2 * bh - 1 - yi)
        xi = xs % (2 * bw)
        xi = np.where(xi < bw, xi, 2 * bw - 1 - xi)
        return base[yi[:, None], xi[None, :]]

    return source


def tissue_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic H&E-like image: tissue islands on glass, pink stroma, purple nuclei.

    Two tissue types differ in nuclear density and colour, so maps and probes have a real
    signal to find. Smooth fields are made coarse and upsampled, which keeps an 8k x 6k
    image to a few seconds.
    """
    rng = np.random.default_rng(seed)
    tissue, tumour, smooth_noise = _regions(rng, width, height)
    texture = smooth_noise(1.5)

    image = np.full((height, width, 3), 246.0, np.float32)  # glass
    image[tissue] = (236, 160, 196)  # stroma
    image[tumour] = (214, 150, 200)
    image += (texture * 10.0 * tissue)[..., None]

    # nuclei: random centres kept with a density that depends on the tissue type
    count = int(0.004 * height * width)
    cy = rng.integers(0, height, count)
    cx = rng.integers(0, width, count)
    keep_p = np.where(tumour[cy, cx], 1.0, np.where(tissue[cy, cx], 0.15, 0.0))
    keep = rng.random(count) < keep_p
    cy, cx = cy[keep], cx[keep]
    colour = np.where(tumour[cy, cx][:, None], [[72, 38, 128]], [[110, 60, 150]]).astype(np.float32)
    radius = 4
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                image[np.clip(cy + dy, 0, height - 1), np.clip(cx + dx, 0, width - 1)] = colour

    image += rng.standard_normal((height, width, 1), dtype=np.float32) * 4.0
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def tissue_regions(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The (tissue, tumour) masks of ``tissue_image(width, height, seed)``: ground truth for tests."""
    tissue, tumour, _ = _regions(np.random.default_rng(seed), width, height)
    return tissue, tumour


def _regions(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, Callable[[float], np.ndarray]]:
    """Tissue and tumour masks from the first two draws of ``rng``, and the field maker."""
    coarse = (max(4, height // 64), max(4, width // 64))

    def smooth_noise(sigma: float) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma)
        field = ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)
        return np.asarray(Image.fromarray(field, mode="F").resize((width, height), Image.Resampling.BILINEAR))

    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    margin = 0.04 * max(height, width)  # glass around the section, like a real slide
    inside = (ys > margin) & (ys < height - 1 - margin) & (xs > margin) & (xs < width - 1 - margin)
    tissue = (smooth_noise(6.0) > -0.2) & inside
    tumour = (smooth_noise(3.0) > 0.5) & tissue
    return tissue, tumour, smooth_noise


def write_sample_slide(
    path: str | os.PathLike[str], width: int = 8192, height: int = 6144, seed: int = 0
) -> Path:
    """The sample slide: procedural tissue at 0.5 µm/px (20x), levels 1, 4, 16, 240 px tiles."""
    image = tissue_image(width, height, seed)
    levels = {ds: _downsampled(image, ds) for ds in (1, 4, 16)}

    def source(ds: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return levels[ds][y : y + h, x : x + w]

    return write_aperio_pyramid(path, width, height, source, mpp=0.5, app_mag=20)


def sample_slide_path(folder: str | os.PathLike[str] | None = None) -> Path:
    """The sample slide's path, written on first use (atomically) with a fixed seed, into
    ``folder`` or the user cache (``XMAG_CACHE_DIR``)."""
    folder = Path(folder) if folder is not None else user_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SAMPLE_NAME
    if not path.exists():
        write_sample_slide(path, seed=0)
    return path
