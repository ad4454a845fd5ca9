"""The test slides and what is known about each: one table that drives the store, reader,
tiling, embedding and CLI tests over every fixture, good and bad.

The files live in ``tests/data`` (origins, licences and sha256 in its README), so a clone runs
its tests with nothing beside it; ``XMAG_TEST_SLIDES`` points the suite at another copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDES = Path(os.environ.get("XMAG_TEST_SLIDES") or Path(__file__).resolve().parent / "data")


@dataclass(frozen=True)
class Case:
    """One test slide: its metadata, what embedding it at the defaults gives, or how it fails."""

    name: str
    file: str
    vendor: str | None = None
    level_dimensions: tuple[tuple[int, int], ...] = ()
    mpp: float | None = None  # None: the store must report it unknown
    tile: int | None = None
    objective_power: float | None = None
    associated: tuple[str, ...] = ()
    # Embedding at the defaults (5x, 224 px, 25% tissue): the patches kept, or what it says.
    patches_5x: int | None = None
    embed_error: str | None = None  # a regex, after the file name
    # A bad file: Slide() fails (open_error), or it opens and every pixel read fails (read_error).
    open_error: str | None = None
    read_error: str | None = None
    recognised: bool = True  # OpenSlide detects a format, so the napari reader claims the file

    @property
    def path(self) -> Path:
        return SLIDES / self.file

    @property
    def opens(self) -> bool:
        return self.open_error is None

    @property
    def error(self) -> str | None:
        """What any use of the slide's pixels says, for a bad file."""
        return self.open_error or self.read_error

    def __str__(self) -> str:  # the pytest id
        return self.name


CMU1 = Case(
    name="CMU-1-Small-Region",
    file="CMU-1-Small-Region.svs",
    vendor="aperio",
    level_dimensions=((2220, 2967),),
    mpp=0.499,
    tile=240,
    objective_power=20.0,
    associated=("label", "macro", "thumbnail"),
    patches_5x=4,  # 2220 x 2967 px at 0.499 µm/px: 2 x 3 cells of 896.4 px, 4 hold tissue
)
BOXES = Case(
    name="boxes",
    file="boxes.tiff",
    vendor="generic-tiff",
    level_dimensions=((300, 250), (150, 125), (75, 62), (37, 31)),
    mpp=None,  # 72 dpi in the TIFF tags: a default, not a calibration
    tile=64,
    embed_error=r"records no µm per pixel.*mpp override",
)
SMALL = Case(
    name="small",
    file="small.svs",
    vendor="aperio",
    level_dimensions=((16, 16),),
    mpp=0.499,
    tile=64,
    objective_power=20.0,
    associated=("thumbnail",),
    embed_error=r"the slide is smaller than one patch: 16 x 16 px",
)
UNREADABLE = Case(name="unreadable", file="unreadable.svs", vendor="aperio", read_error="Bogus marker length")
UNOPENABLE = Case(name="unopenable", file="unopenable.tiff", open_error="Unsupported TIFF compression")
BROKEN = Case(name="broken", file="broken.svs", open_error="not a slide format", recognised=False)

GOOD_CASES = (CMU1, BOXES, SMALL)
BAD_CASES = (UNREADABLE, UNOPENABLE, BROKEN)
ALL_CASES = GOOD_CASES + BAD_CASES


def tissue_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels coloured like H&E stain: saturated pink or purple, not white or grey."""
    rgb = rgb[..., :3].astype(np.int16)
    saturation = rgb.max(-1) - rgb.min(-1)
    stained = (saturation > 40) & (rgb[..., 1] < rgb[..., 0]) & (rgb[..., 1] < rgb[..., 2] + 40)
    return float(stained.mean())


def save_screenshot(shot: np.ndarray, name: str, tmp_path: Path) -> Path:
    """Into the test's folder, and into XMAG_SCREENSHOT_DIR (e.g. docs/images) when set."""
    from PIL import Image

    for folder in filter(None, [tmp_path, os.environ.get("XMAG_SCREENSHOT_DIR")]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot).save(Path(folder) / name)
    return Path(tmp_path) / name
