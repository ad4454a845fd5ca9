"""Shared test data: the real slides in ../shared/data/slides and pyramids built from them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm  # noqa: F401  # first: importing triton (through timm) after a napari viewer exists crashes under Xvfb

ROOT = Path(__file__).resolve().parents[1]
SLIDES = Path(os.environ.get("XMAG_TEST_SLIDES", ROOT.parent / "shared" / "data" / "slides"))


@dataclass(frozen=True)
class Case:
    """One test slide and what is known about it, driving store, reader and CLI tests."""

    name: str
    file: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    mpp: float | None  # None: the store must report it unknown
    tile: int
    objective_power: float | None = None
    associated: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return SLIDES / self.file


CMU1 = Case(
    name="CMU-1-Small-Region",
    file="CMU-1-Small-Region.svs",
    vendor="aperio",
    level_dimensions=((2220, 2967),),
    mpp=0.499,
    tile=240,
    objective_power=20.0,
    associated=("label", "macro", "thumbnail"),
)
BOXES = Case(
    name="boxes",
    file="boxes.tiff",
    vendor="generic-tiff",
    level_dimensions=((300, 250), (150, 125), (75, 62), (37, 31)),
    mpp=None,  # 72 dpi in the TIFF tags: a default, not a calibration
    tile=64,
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
)
GOOD_CASES = (CMU1, BOXES, SMALL)
# name -> (file, what the error must say)
BAD_FILES = {
    "unreadable": ("unreadable.svs", "Bogus marker length"),
    "unopenable": ("unopenable.tiff", "Unsupported TIFF compression"),
    "broken": ("broken.svs", "not a slide format"),
}


def pytest_configure(config: pytest.Config) -> None:
    if not (SLIDES / CMU1.file).exists():
        raise pytest.UsageError(f"test slides not found in {SLIDES} (set XMAG_TEST_SLIDES)")


@pytest.fixture(scope="session")
def cmu1_rgb() -> np.ndarray:
    import openslide

    with openslide.OpenSlide(CMU1.path) as osr:
        return np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))


@pytest.fixture(scope="session")
def pyramid_path(tmp_path_factory: pytest.TempPathFactory, cmu1_rgb: np.ndarray) -> Path:
    """A 3-level Aperio pyramid (downsamples 1, 4, 16; 240 px JPEG tiles) of real tissue."""
    from napari_xmag.synthetic import mirrored_source, write_aperio_pyramid

    path = tmp_path_factory.mktemp("pyramid") / "cmu1-pyramid.svs"
    return write_aperio_pyramid(path, 3200, 2400, mirrored_source(cmu1_rgb), mpp=0.5, app_mag=20)


@pytest.fixture(autouse=True)
def _no_replace_dialogs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test never waits on a "replace it?" dialog: the user says no unless a test says yes."""
    from napari_xmag._widgets import _common

    monkeypatch.setattr(_common, "confirm_replace", lambda path, reason: False)


@pytest.fixture
def xmag_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user cache, so tests never touch the real one."""
    monkeypatch.setenv("XMAG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


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
