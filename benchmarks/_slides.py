"""Slides shared by the benchmarks: large Aperio pyramids built from real tissue."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# the test slides in the repository, as in the tests (XMAG_TEST_SLIDES overrides)
SLIDES = Path(os.environ.get("XMAG_TEST_SLIDES") or Path(__file__).resolve().parents[1] / "tests" / "data")
CMU1_SMALL = SLIDES / "CMU-1-Small-Region.svs"


def read_cmu1(path: Path = CMU1_SMALL) -> np.ndarray:
    """CMU-1-Small-Region level 0 as RGB uint8 (2220 x 2967)."""
    import openslide

    with openslide.OpenSlide(path) as osr:
        return np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))


def build_cmu1_pyramid(folder: str | Path, width: int = 40000, height: int = 30000) -> Path:
    """Write ``folder/cmu1-40k.svs``: CMU-1 tissue mirrored to ``width`` x ``height``.

    0.5 µm/px (20x), levels at downsample 1, 4, 16, 240 px JPEG tiles, read back by
    OpenSlide as an Aperio SVS. Takes ~15-30 s for the default size.
    """
    from napari_xmag.synthetic import mirrored_source, write_aperio_pyramid

    path = Path(folder) / "cmu1-40k.svs"
    return write_aperio_pyramid(path, width, height, mirrored_source(read_cmu1()))


@contextmanager
def benchmark_slide(slide: Path | None, keep: Path | None = None) -> Iterator[Path]:
    """``slide`` when given; else the 40k pyramid built into ``keep`` (kept) or a temporary
    folder (removed on exit)."""
    if slide is not None:
        yield slide
        return
    tmp = None if keep else tempfile.mkdtemp(prefix="bench-slide-")
    folder = Path(keep or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        built = build_cmu1_pyramid(folder)
        print(f"built {built} ({built.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - start:.1f} s")
        yield built
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
