"""The slide store: one OpenSlide handle, its metadata, and a lazy multiscale pyramid.

Knows nothing of napari, Qt or torch. Every pixel comes from ``OpenSlide.read_region``
on the slide's native tile grid, so a chunk of level ``L`` at tile ``(i, j)`` is exactly
what OpenSlide returns for that tile. Tiles are composited onto white where transparent.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openslide
from PIL import Image

from ._memory import return_freed_memory, too_big
from ._paths import file_problem
from ._values import positive_float
from .slide_checks import (
    damage_reason,
    dark_background_reason,
    dicom_reason,
    missing_pixels_reason,
    not_brightfield_reason,
)

__all__ = [
    "MAGNIFICATION_MPP",
    "LevelArray",
    "MissingMppError",
    "MissingMppWarning",
    "Region",
    "Slide",
    "SlideError",
    "SlideOpenError",
    "SlideReadError",
    "damage_reason",
    "level0_to_um",
    "magnification_name",
    "not_brightfield_reason",
    "parse_mpp",
    "shared_tile_cache",
    "um_to_level0",
]

#: The named magnifications, as µm per pixel (the project is about 5x against 20x).
MAGNIFICATION_MPP = {"40x": 0.25, "20x": 0.5, "10x": 1.0, "5x": 2.0, "2.5x": 4.0}
STUDENT_MAGNIFICATION, TEACHER_MAGNIFICATION = "5x", "20x"

DEFAULT_TILE = 256  # for formats that do not report a tile size
_TILE_CACHE_ENV = "XMAG_TILE_CACHE_MB"
_DEFAULT_TILE_CACHE_MB = 32
# Levels whose read is resampled by less than this relative amount are used as they are.
_RESAMPLE_TOLERANCE = 1e-3
# No scanner images tissue coarser than this at level 0; such a value is a default DPI
# written by a generic TIFF writer (72 dpi = 352.8 µm/px), not a calibration.
_IMPLAUSIBLE_MPP = 100.0


class SlideError(Exception):
    """A slide cannot be used; the message names the file and the cause."""


class SlideOpenError(SlideError):
    """The file is not a slide OpenSlide can open."""


class SlideReadError(SlideError):
    """The slide opened but its pixels cannot be read."""


class MissingMppError(SlideError):
    """A physical size was asked of a slide that does not record its µm per pixel."""


class MissingMppWarning(UserWarning):
    """The slide records no µm per pixel; physical scales are unknown."""


#: Where an mpp override is given, said the same way by every error about a missing mpp.
MPP_OVERRIDE_HINT = (
    "--mpp-override UM on the command line, the 'mpp override' field of the napari widgets,"
    " or Slide(path, mpp=UM) (e.g. 0.5 for a 20x scan)"
)


_open_slides: weakref.WeakSet[Slide] = weakref.WeakSet()
_open_slides_lock = threading.Lock()


@functools.cache
def shared_tile_cache() -> openslide.OpenSlideCache:
    """The one bounded tile cache every open slide shares (``XMAG_TILE_CACHE_MB``, default 32).

    Dropped when the last slide closes, so closing every slide gives its memory back.
    """
    megabytes = float(os.environ.get(_TILE_CACHE_ENV, _DEFAULT_TILE_CACHE_MB))
    return openslide.OpenSlideCache(int(megabytes * 1024 * 1024))


def open_slides() -> list[Slide]:
    """The slides opened and not yet closed (or collected)."""
    with _open_slides_lock:
        return list(_open_slides)


def _slide_opened(slide: Slide) -> None:
    with _open_slides_lock:
        _open_slides.add(slide)


def _slide_closed(slide: Slide) -> None:
    with _open_slides_lock:
        _open_slides.discard(slide)
        if not _open_slides:
            shared_tile_cache.cache_clear()
            return_freed_memory()


def parse_mpp(value: float | str) -> float:
    """A target resolution as µm/px; accepts ``2.0``, ``"2.0"``, ``"5x"`` or ``"20x"``."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in MAGNIFICATION_MPP:
            return MAGNIFICATION_MPP[key]
        try:
            value = float(key)
        except ValueError:
            known = ", ".join(MAGNIFICATION_MPP)
            raise ValueError(f"resolution {value!r} is neither µm/px nor one of {known}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"resolution must be a positive number of µm/px, got {value!r}")
    return float(value)


def magnification_name(mpp: float, rel_tol: float = 1e-6) -> str | None:
    """The name of a resolution (``2.0 -> "5x"``), or None when it is not within ``rel_tol`` of
    a named one (``rel_tol=0.15`` names a scan: 0.499 µm/px is "20x")."""
    name, value = min(MAGNIFICATION_MPP.items(), key=lambda item: abs(math.log(item[1] / mpp)))
    return name if abs(value - mpp) <= rel_tol * value else None


# ---- napari world coordinates ----------------------------------------------------------------
# The slide layer our reader makes has ``scale = mpp`` and no translate, so level-0 pixel ``i``
# is *centred* at world ``i * mpp`` µm: its left edge ``i`` is at ``(i - 0.5) * mpp``. Every
# conversion between level-0 px and world µm in the package is one of these two.
def level0_to_um(
    values: Any, mpp: float | Sequence[float], offset: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """Level-0 positions (x, y pairs on the last axis: points, or boxes x0, y0, x1, y1; pixel
    ``i`` spans ``[i, i + 1)``) as world µm, x, y order kept; ``offset``: the slide layer's
    translate, as world (x, y)."""
    values = np.asarray(values, np.float64)
    mx, my = (mpp, mpp) if isinstance(mpp, (int, float)) else mpp
    pairs = values.shape[-1] // 2
    scale = np.array([mx, my] * pairs)
    shift = np.array(list(offset) * pairs, np.float64)
    return (values - 0.5) * scale + shift


def um_to_level0(
    values: Any, mpp: float | Sequence[float], offset: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """The inverse of :func:`level0_to_um`: world µm (x, y pairs) as level-0 positions."""
    values = np.asarray(values, np.float64)
    mx, my = (mpp, mpp) if isinstance(mpp, (int, float)) else mpp
    pairs = values.shape[-1] // 2
    scale = np.array([mx, my] * pairs)
    shift = np.array(list(offset) * pairs, np.float64)
    return (values - shift) / scale + 0.5


@dataclass(frozen=True)
class Region:
    """Pixels read at a target resolution, and what was done to get them."""

    image: np.ndarray  # (H, W, 3) uint8
    mpp: tuple[float, float]  # effective µm/px (x, y) of ``image``
    level: int  # pyramid level read
    scale: tuple[float, float]  # level pixels per output pixel (x, y); 1.0 = no resampling
    origin: tuple[int, int]  # level-0 x, y of the top-left corner actually read


@dataclass(frozen=True)
class LevelInfo:
    width: int
    height: int
    downsample: float
    tile_width: int
    tile_height: int


def _float_property(props: Any, key: str) -> float | None:
    return positive_float(props.get(key))


def _readable_properties(props: Any) -> dict[str, str]:
    """The properties as a dict, without those OpenSlide lists but cannot look up (a damaged,
    non-UTF-8 key)."""
    out = {}
    for key in props:
        try:
            out[key] = props[key]
        except KeyError:  # noqa: PERF203  (a damaged key; properties are few)
            continue
    return out


def _mpp_from_properties(props: Any) -> tuple[float | None, float | None, str | None]:
    """Mpp x/y and where they came from: OpenSlide's normalised keys, then vendor keys."""
    x = _float_property(props, openslide.PROPERTY_NAME_MPP_X)
    y = _float_property(props, openslide.PROPERTY_NAME_MPP_Y)
    if x and y:
        return x, y, "openslide.mpp"
    aperio = _float_property(props, "aperio.MPP")
    if aperio:
        return aperio, aperio, "aperio.MPP"
    mirax_x = _float_property(props, "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X")
    mirax_y = _float_property(props, "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_Y")
    if mirax_x and mirax_y:
        return mirax_x, mirax_y, "mirax"
    unit = props.get("tiff.ResolutionUnit")
    per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(str(unit).lower())
    res_x = _float_property(props, "tiff.XResolution")
    res_y = _float_property(props, "tiff.YResolution")
    if per_unit and res_x and res_y:
        return per_unit / res_x, per_unit / res_y, "tiff.resolution"
    return None, None, None


class LevelArray:
    """One pyramid level as a read-only NumPy-like array, (Y, X, 3) uint8.

    Indexing reads exactly the native tiles the index touches (counted in ``tile_reads``),
    several at once when a view spans many, and assembles them.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, slide: Slide, level: int) -> None:
        self._slide = slide
        self.level = level
        info = slide.levels[level]
        self.shape = (info.height, info.width, 3)
        self.chunks = (info.tile_height, info.tile_width, 3)
        self._info = info

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<LevelArray {self._slide.path.name} level={self.level} shape={self.shape}>"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        ys, xs, rest = _split_key(key, self.shape)
        y0, y1 = ys
        x0, x1 = xs
        out = self._slide._read_level_window(self.level, x0, y0, x1 - x0, y1 - y0)
        return out[rest] if rest is not None else out


def _split_key(key: Any, shape: tuple[int, int, int]) -> tuple[tuple[int, int], tuple[int, int], Any]:
    """Turn an index into a contiguous y and x window plus what to apply after reading."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
    key = key + (slice(None),) * (3 - len(key))
    windows = []
    post: list[Any] = []
    for k, n in zip(key[:2], shape[:2], strict=False):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for size {n}")
            windows.append((i, i + 1))
            post.append(0)
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step < 0:
                windows.append((stop + 1, start + 1) if start >= stop else (0, 0))
                post.append(slice(None, None, step))
            else:
                windows.append((start, max(start, stop)))
                post.append(slice(None, None, step))
        else:
            raise TypeError(f"slide levels take integer or slice indices, not {type(k).__name__}")
    post.append(key[2])
    trivial = all(p == slice(None, None, 1) for p in post[:2]) and post[2] == slice(None)
    return windows[0], windows[1], None if trivial else tuple(post)


class Slide:
    """A whole-slide image opened with OpenSlide.

    ``mpp`` overrides what the file records (µm per pixel at level 0). A slide without
    an mpp opens with a :class:`MissingMppWarning` and ``mpp_x = mpp_y = None``.
    """

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        self.path = Path(path)
        problem = file_problem(self.path)
        if problem:  # a pipe or a device would block OpenSlide forever: say so instead
            raise SlideOpenError(f"{self.path}: {problem}" if problem != "is a folder, not a file"
                                 else f"{self.path}: is a folder, not a slide file")
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as err:
            damage = damage_reason(self.path) or dicom_reason(self.path, str(err) or "unsupported format")
            raise SlideOpenError(
                f"{self.path}: {damage}" if damage else f"{self.path}: not a slide format OpenSlide"
                " recognises (unsupported format or not a slide file)"
            ) from None
        except openslide.OpenSlideError as err:
            dicom = dicom_reason(self.path, str(err))
            if dicom:
                raise SlideOpenError(f"{self.path}: {dicom}") from None
            damage = damage_reason(self.path)
            raise SlideOpenError(
                f"{self.path}: {damage}; OpenSlide says: {err}" if damage
                else f"{self.path}: OpenSlide cannot open it: {err}"
            ) from None
        except OSError as err:
            raise SlideOpenError(f"{self.path}: cannot be read: {err.strerror or err}") from None
        not_rgb = not_brightfield_reason(self.path, self._osr.dimensions)
        if not_rgb:
            self._osr.close()
            raise SlideOpenError(
                f"{self.path}: not an RGB brightfield slide: {not_rgb}. napari-xmag reads 8-bit RGB"
                " brightfield slides (H&E, IHC); open fluorescence or grayscale images with another reader"
            )
        sparse = missing_pixels_reason(self.path, self._osr.dimensions)
        if sparse:
            self._osr.close()
            raise SlideOpenError(f"{self.path}: {sparse}")
        self._osr.set_cache(shared_tile_cache())
        props = self._osr.properties
        self.properties: dict[str, str] = _readable_properties(props)
        self.vendor: str | None = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.objective_power = _float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.levels: tuple[LevelInfo, ...] = tuple(
            LevelInfo(
                width=w,
                height=h,
                downsample=float(self._osr.level_downsamples[i]),
                tile_width=int(props.get(f"openslide.level[{i}].tile-width", DEFAULT_TILE)),
                tile_height=int(props.get(f"openslide.level[{i}].tile-height", DEFAULT_TILE)),
            )
            for i, (w, h) in enumerate(self._osr.level_dimensions)
        )
        self.mpp_x: float | None
        self.mpp_y: float | None
        self.mpp_source: str | None
        if mpp is not None:
            mpp = parse_mpp(mpp)
            self.mpp_x, self.mpp_y, self.mpp_source = mpp, mpp, "override"
        else:
            self.mpp_x, self.mpp_y, self.mpp_source = _mpp_from_properties(props)
            reason = "the slide records no µm per pixel"
            if (self.mpp_x is not None and self.mpp_y is not None
                    and max(self.mpp_x, self.mpp_y) >= _IMPLAUSIBLE_MPP):
                reason = (
                    f"the recorded resolution ({self.mpp_x:.4g} µm/px, from {self.mpp_source}) is"
                    " a default DPI, not a microscope calibration"
                )
                self.mpp_x = self.mpp_y = self.mpp_source = None
            if self.mpp_x is None:
                warnings.warn(
                    f"{self.path}: {reason}; physical scales are unknown. To use it at a target"
                    f" magnification, give an mpp override: {MPP_OVERRIDE_HINT}",
                    MissingMppWarning,
                    stacklevel=2,
                )
        self._lock = threading.Lock()
        self._tile_reads = 0
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        _slide_opened(self)  # last: a constructor that raised has nothing to close

    # ---- metadata ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def file_size(self) -> int:
        """Bytes of the slide file (of the index file for formats that keep data beside it)."""
        return self.path.stat().st_size

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies the slide's content, wherever the file lies: OpenSlide's
        ``quickhash-1`` (a hash of the smallest level and the properties), else a hash of the
        file's size and its first and last MiB."""
        quick = self.properties.get("openslide.quickhash-1")
        if quick:
            return f"quickhash-1:{quick}"
        digest = hashlib.sha256(str(self.file_size).encode())
        with self.path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if self.file_size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
        return f"sha256-ends:{digest.hexdigest()}"

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.levels[0].width, self.levels[0].height

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((lv.width, lv.height) for lv in self.levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(lv.downsample for lv in self.levels)

    @property
    def mpp(self) -> float | None:
        """Mean level-0 µm/px, or None if unknown."""
        if self.mpp_x is None or self.mpp_y is None:
            return None
        return (self.mpp_x + self.mpp_y) / 2

    @property
    def associated_images(self) -> tuple[str, ...]:
        return tuple(self._osr.associated_images)

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail) as RGB uint8."""
        try:
            image = self._osr.associated_images[name]
        except KeyError:
            raise KeyError(f"{self.path}: no associated image {name!r}") from None
        return _rgba_to_rgb(np.asarray(image))

    def level_mpp(self, level: int) -> tuple[float, float]:
        mpp_x, mpp_y = self.require_mpp_xy("its levels' µm per pixel are unknown")
        ds = self.levels[level].downsample
        return mpp_x * ds, mpp_y * ds

    def summary(self) -> dict[str, Any]:
        """Metadata as plain JSON-able values (what ``xmag info`` prints)."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "levels": [
                {
                    "level": i,
                    "width": lv.width,
                    "height": lv.height,
                    "downsample": lv.downsample,
                    "tile": [lv.tile_width, lv.tile_height],
                    "mpp": None if self.mpp is None else self.mpp * lv.downsample,
                }
                for i, lv in enumerate(self.levels)
            ],
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
        }
        if self.mpp is not None:
            out["magnifications"] = {
                name: dict(zip(("level", "factor"), self.best_level_for_mpp(m), strict=True), mpp=m)
                for name, m in ((n, MAGNIFICATION_MPP[n])
                                 for n in (TEACHER_MAGNIFICATION, STUDENT_MAGNIFICATION))
            }
        return out

    # ---- pyramid ----------------------------------------------------------------------
    def level_array(self, level: int) -> LevelArray:
        return LevelArray(self, level)

    @functools.cached_property
    def pyramid(self) -> list[Any]:
        """One lazy dask array per level, chunked on the native tile grid."""
        import dask.array as da  # here: opening a slide (xmag info, embed's checks) needs no dask

        arrays = []
        for level in range(self.level_count):
            source = self.level_array(level)
            arrays.append(
                da.from_array(
                    source,
                    chunks=source.chunks,
                    asarray=False,
                    lock=False,
                    inline_array=True,
                    meta=np.empty((0, 0, 3), np.uint8),
                    name=f"xmag-{self._content_token()}-{level}",
                )
            )
        return arrays

    def _content_token(self) -> str:
        """Names the pyramid's dask chunks: the same file content gives the same name, so
        napari's chunk cache is shared between two opens of one file and never between files."""
        quickhash = self.properties.get("openslide.quickhash-1")
        if quickhash:
            return quickhash
        stat = self.path.stat()
        return hashlib.sha256(f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()

    @property
    def tile_reads(self) -> int:
        """How many native tiles have been read from OpenSlide so far (for tests)."""
        return self._tile_reads

    def require_mpp(self, consequence: str = "physical sizes are unknown") -> float:
        """The mean level-0 µm/px, or the one :class:`MissingMppError` every caller raises:
        ``"{path}: the slide records no µm per pixel, so {consequence}; pass an mpp override ..."``."""
        return float(np.mean(self.require_mpp_xy(consequence)))

    def require_mpp_xy(self, consequence: str = "physical sizes are unknown") -> tuple[float, float]:
        """(mpp x, mpp y), or :class:`MissingMppError` as :meth:`require_mpp` raises it."""
        if self.mpp_x is None or self.mpp_y is None:
            raise MissingMppError(
                f"{self.path}: the slide records no µm per pixel, so {consequence}; pass an mpp"
                f" override: {MPP_OVERRIDE_HINT}"
            )
        return float(self.mpp_x), float(self.mpp_y)

    def _read_tile(self, level: int, col: int, row: int) -> np.ndarray:
        info = self.levels[level]
        x = col * info.tile_width
        y = row * info.tile_height
        w = min(info.tile_width, info.width - x)
        h = min(info.tile_height, info.height - y)
        origin = (round(x * info.downsample), round(y * info.downsample))
        try:
            image = self._osr.read_region(origin, level, (w, h))
        except openslide.OpenSlideError as err:
            raise SlideReadError(
                f"{self.path}: cannot read level {level} tile ({col}, {row}): {err}"
            ) from None
        with self._lock:
            self._tile_reads += 1
        return np.asarray(image)  # RGBA; callers composite it onto white

    def _read_level_window(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level pixels [y:y+h, x:x+w], assembled from native tiles."""
        if self._closed:
            raise SlideError(f"{self.path}: the slide is closed")
        out = np.empty((h, w, 3), np.uint8)
        if w <= 0 or h <= 0:
            return out
        info = self.levels[level]
        tw, th = info.tile_width, info.tile_height
        tiles = [
            (col, row)
            for row in range(y // th, (y + h - 1) // th + 1)
            for col in range(x // tw, (x + w - 1) // tw + 1)
        ]

        def paste(tile: tuple[int, int]) -> None:
            col, row = tile
            rgba = self._read_tile(level, col, row)
            tx, ty = col * tw, row * th
            sx0, sy0 = max(x, tx), max(y, ty)
            sx1 = min(x + w, tx + rgba.shape[1])
            sy1 = min(y + h, ty + rgba.shape[0])
            _composite_into(
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x], rgba[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
            )

        if len(tiles) < 4:
            for tile in tiles:
                paste(tile)
        else:
            # OpenSlide releases the GIL while decoding, so a few threads fill a view faster.
            for _ in self._executor().map(paste, tiles):
                pass
        return out

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="xmag-tiles"
                )
            return self._pool

    # ---- reading at a physical resolution ---------------------------------------------
    def best_level_for_mpp(self, mpp: float | str) -> tuple[int, float]:
        """The coarsest level at least as fine as ``mpp``, and the factor to reduce it by.

        Never upsamples unless the slide's finest level is coarser than the target.
        """
        target = parse_mpp(mpp)
        base = self.require_mpp(f"{target:g} µm/px cannot be found among its levels")
        best = 0
        for level, info in enumerate(self.levels):
            if base * info.downsample <= target * (1 + _RESAMPLE_TOLERANCE):
                best = level
        factor = target / (base * self.levels[best].downsample)
        if abs(factor - 1) <= _RESAMPLE_TOLERANCE:
            factor = 1.0
        return best, factor

    def read_region(
        self,
        x: int,
        y: int,
        size: int | Sequence[int],
        mpp: float | str | None = None,
        level: int | None = None,
    ) -> Region:
        """Read a ``size`` (w, h) pixel field of view whose top-left is level-0 (x, y).

        With ``mpp``, the output is at that µm/px: the best level is read and reduced with
        an antialiasing (Lanczos) filter. With ``level``, the level's pixels are returned as
        they are. Areas outside the slide are white.
        """
        out_w, out_h = (size, size) if isinstance(size, (int, np.integer)) else map(int, size)
        if out_w <= 0 or out_h <= 0:
            raise ValueError(f"region size must be positive, got {(out_w, out_h)}")
        if (mpp is None) == (level is None):
            raise ValueError("give exactly one of mpp= or level=")
        if mpp is not None:
            level, factor = self.best_level_for_mpp(mpp)
        elif level is not None:
            factor = 1.0
        else:  # pragma: no cover - refused above
            raise ValueError("give exactly one of mpp= or level=")
        info = self.levels[level]
        ds = info.downsample
        # The read starts on the level's pixel grid; ``origin`` reports where that is.
        lx, ly = round(x / ds), round(y / ds)
        read_w = max(1, round(out_w * factor))
        read_h = max(1, round(out_h * factor))
        pixels = self._read_padded(level, lx, ly, read_w, read_h)
        if (read_w, read_h) != (out_w, out_h):
            pixels = np.asarray(Image.fromarray(pixels).resize((out_w, out_h), Image.Resampling.LANCZOS))
        sx, sy = read_w / out_w, read_h / out_h
        if self.mpp_x is not None and self.mpp_y is not None:
            eff = (self.mpp_x * ds * sx, self.mpp_y * ds * sy)
        else:
            eff = (float("nan"), float("nan"))
        origin = (round(lx * ds), round(ly * ds))
        return Region(image=pixels, mpp=eff, level=level, scale=(sx, sy), origin=origin)

    def _read_padded(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level pixels that may fall partly outside the level; outside is white."""
        info = self.levels[level]
        budget = too_big(2 * 3 * w * h)  # the pixels, and the resampled copy made of them
        if budget:
            coarsest = ""
            if level == self.level_count - 1 and self.mpp is not None:
                coarsest = f" (its coarsest level, {self.mpp * info.downsample:.3g} µm/px)"
            raise SlideReadError(f"{self.path}: reading {w} x {h} px of level {level}{coarsest}: {budget}")
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, info.width), min(y + h, info.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read_level_window(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide from its coarsest useful level, at most ``max_size`` px on a side."""
        level = self.level_count - 1
        for i, info in enumerate(self.levels):
            if max(info.width, info.height) <= 4 * max_size:
                level = i
                break
        pixels = self.level_array(level)[:, :]
        h, w = pixels.shape[:2]
        scale = max_size / max(h, w)
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
        return pixels

    @functools.cached_property
    def brightfield_problem(self) -> str | None:
        """Why this RGB slide does not look like stained brightfield tissue (a dark, fluorescence
        background), from its thumbnail, or None. Brightfield models embed such pixels as if they
        were stain: commands refuse them unless asked (``--allow-non-he``)."""
        return dark_background_reason(self.thumbnail(256))

    def check_readable(self) -> None:
        """Read one tile of the coarsest level; raises :class:`SlideReadError` if corrupt."""
        self._read_tile(self.level_count - 1, 0, 0)

    # ---- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._osr.close()
        _slide_closed(self)

    def __del__(self) -> None:
        # a slide dropped without close() (a napari layer deleted) still frees its handle
        if not getattr(self, "_closed", True):
            self.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, levels={self.level_count}, mpp={self.mpp})"


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA onto white."""
    out = np.empty((*rgba.shape[:2], 3), np.uint8)
    _composite_into(out, rgba)
    return out


def _composite_into(out: np.ndarray, rgba: np.ndarray) -> None:
    """Write RGBA composited onto white into ``out`` (H, W, 3)."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        for c in range(3):  # channel by channel: ~6x faster than one strided RGBA->RGB copy
            out[..., c] = rgba[..., c]
        return
    a = alpha[..., None].astype(np.uint32)
    # round(c * a / 255 + 255 * (1 - a / 255)), in integers
    out[...] = (rgba[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
