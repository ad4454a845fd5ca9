"""Tissue mask, patch grids at an exact µm/px, and the 5x <-> 20x pairing geometry.

Knows nothing of napari, Qt or torch: numpy, scipy and scikit-image only. Every coordinate
is a level-0 pixel of the slide; every size that matters physically is given in µm or µm/px,
so the same call works on slides scanned at 20x (0.5 µm/px) and at 40x (0.25 µm/px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .slide import MAGNIFICATION_MPP, Slide, SlideError, magnification_name, parse_mpp

__all__ = [
    "NoTissueError",
    "PairGeometry",
    "PatchGrid",
    "SlidePairs",
    "SlideTooSmallError",
    "TissueMask",
    "check_patch_fits",
    "grid_report",
    "pair_geometry",
    "patch_at",
    "patch_grid",
    "require_patches",
    "slide_pairs",
    "teacher_crop_coords",
    "tissue_mask",
]


class NoTissueError(SlideError):
    """No patch of the slide (or of the region asked for) holds enough tissue."""


class SlideTooSmallError(NoTissueError):
    """The slide is so small against one patch that no patch can hold enough of it."""

# Glass is nearly grey; H&E stain is not. Below this HSV saturation nothing counts as
# tissue, whatever Otsu says (it splits even a blank slide's JPEG noise in two).
_MIN_SATURATION = 0.05
# Otsu always finds a threshold; on a blank or single-colour slide the two classes it
# separates are both glass (or both one colour). Require this much saturation between them.
_MIN_CONTRAST = 0.08
# Otsu's lower class is glass (plus pale tissue) on every whole slide. When it is this
# saturated there is no glass to compare with: a single colour, whose only contrast is JPEG
# ringing at the slide's edge, or an image cropped inside tissue.
_MAX_GLASS_SATURATION = 0.15
# A pixel whose darkest channel is this bright is glass, even if slightly tinted.
_WHITE_LEVEL = 220
# Crops per side may miss a whole number by this relative amount (float noise, e.g. 448 / 112).
_RATIO_TOLERANCE = 1e-6


# ---- tissue mask --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TissueMask:
    """Where the tissue is, as a boolean raster over the whole slide.

    Mask pixel ``(i, j)`` covers level-0 pixels ``[j * downsample, (j + 1) * downsample)`` in
    x and the same in y; the raster may run past the slide's right and bottom edges by less
    than one mask pixel.
    """

    mask: np.ndarray  # (H, W) bool
    mpp: float  # µm per mask pixel
    downsample: float  # level-0 pixels per mask pixel
    threshold: float | None = None  # saturation threshold used; None when no tissue was found

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.mask.shape
        return int(rows), int(cols)

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def tissue_area_um2(self) -> float:
        return float(self.mask.sum()) * self.mpp * self.mpp

    def tissue_fractions(self, coords: np.ndarray, size_level0: float) -> np.ndarray:
        """Fraction of each square ``size_level0`` box (top-left ``coords``, level 0) that is tissue.

        Exact for the raster: the summed-area table is interpolated bilinearly at the box's
        fractional corners, which integrates the piecewise-constant mask over the box. Parts
        of a box outside the slide count as glass.
        """
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        table = _summed_area_table(self.mask)
        x0 = coords[:, 0] / self.downsample
        y0 = coords[:, 1] / self.downsample
        side = size_level0 / self.downsample
        x1, y1 = x0 + side, y0 + side
        tissue = (
            _area_below(table, x1, y1) - _area_below(table, x0, y1)
            - _area_below(table, x1, y0) + _area_below(table, x0, y0)
        )
        return np.clip(tissue / (side * side), 0.0, 1.0)

    def covered_by(self, coords: np.ndarray, size_level0: float) -> np.ndarray:
        """Mask pixels whose centre lies inside at least one of the boxes, as a bool raster."""
        h, w = self.mask.shape
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        # Pixel j's centre (j + 0.5) * ds is in [x, x + size) when ceil(x / ds - 0.5) <= j.
        x0 = np.clip(np.ceil(coords[:, 0] / self.downsample - 0.5), 0, w).astype(np.intp)
        y0 = np.clip(np.ceil(coords[:, 1] / self.downsample - 0.5), 0, h).astype(np.intp)
        x1 = np.clip(np.ceil((coords[:, 0] + size_level0) / self.downsample - 0.5), 0, w).astype(np.intp)
        y1 = np.clip(np.ceil((coords[:, 1] + size_level0) / self.downsample - 0.5), 0, h).astype(np.intp)
        # Rasterise the union with a 2-D difference array: O(N + H*W), not O(N * box area).
        edges = np.zeros((h + 1, w + 1), np.int32)
        np.add.at(edges, (y0, x0), 1)
        np.add.at(edges, (y0, x1), -1)
        np.add.at(edges, (y1, x0), -1)
        np.add.at(edges, (y1, x1), 1)
        return edges.cumsum(0).cumsum(1)[:h, :w] > 0

    def coverage(self, coords: np.ndarray, size_level0: float) -> float | None:
        """Fraction of the tissue raster covered by the union of the boxes; None without tissue."""
        tissue = int(self.mask.sum())
        if tissue == 0:
            return None
        covered = self.covered_by(coords, size_level0) & self.mask
        return float(covered.sum() / tissue)


def tissue_mask(
    slide: Slide,
    mpp: float | str = 8.0,
    *,
    min_area_um2: float = 10_000.0,
    max_hole_um2: float = 100_000.0,
    closing_um: float = 32.0,
    opening_um: float = 8.0,
    min_saturation: float = _MIN_SATURATION,
    min_contrast: float = _MIN_CONTRAST,
    white_level: int = _WHITE_LEVEL,
) -> TissueMask:
    """Tissue mask of the whole slide at ``mpp`` µm/px (8 µm/px by default).

    Stained tissue is saturated, glass is not: pixels whose HSV saturation is above an Otsu
    threshold (at least ``min_saturation``) and whose darkest channel is below
    ``white_level`` are tissue. Gaps narrower than ``closing_um`` are bridged, specks
    thinner than ``opening_um`` removed, holes smaller than ``max_hole_um2`` filled and
    pieces smaller than ``min_area_um2`` dropped.

    Otsu always splits, so its split is trusted only between glass and stain: a slide whose
    two classes differ by less than ``min_contrast`` in saturation (blank glass), or whose
    lower class is not glass-like (a single colour; an image cropped inside tissue), gets an
    empty mask, with ``threshold`` None.
    """
    base = slide.require_mpp("a tissue mask cannot be computed")
    mask_mpp = parse_mpp(mpp)
    if mask_mpp < base:
        raise ValueError(
            f"a tissue mask at {mask_mpp:g} µm/px would be finer than the slide ({base:g} µm/px)"
        )
    downsample = mask_mpp / base
    width, height = slide.dimensions
    size = (math.ceil(width / downsample), math.ceil(height / downsample))
    # read_region picks the coarsest level at least as fine as mask_mpp: on a pyramid with
    # an 8 µm/px level this decodes only that level's tiles.
    rgb = slide.read_region(0, 0, size, mpp=mask_mpp).image
    saturation, darkest = _hsv_saturation(rgb)
    threshold = _saturation_threshold(saturation, min_saturation, min_contrast)
    if threshold is None:
        return TissueMask(np.zeros(rgb.shape[:2], bool), mask_mpp, downsample, None)
    tissue = (saturation > threshold) & (darkest < white_level)
    tissue = _clean(tissue, mask_mpp, min_area_um2, max_hole_um2, closing_um, opening_um)
    return TissueMask(tissue, mask_mpp, downsample, threshold)


def _hsv_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation, (max - min) / max, as skimage.color.rgb2hsv computes it, and the min.

    Computed directly in float32: rgb2hsv builds three float64 planes, about 10x the memory
    of the image, for the one channel we need; and channel-wise maximum is ~25x faster than
    a reduction over the length-3 last axis.
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = np.zeros(high.shape, np.float32)
    np.divide(high - low, high, out=saturation, where=high > 0, dtype=np.float32)
    return saturation, low


def _saturation_threshold(saturation: np.ndarray, floor: float, min_contrast: float) -> float | None:
    """Otsu's threshold on the saturation histogram, or None when there is nothing to separate."""
    bins = np.round(saturation * 255).astype(np.uint8).ravel()
    counts = np.bincount(bins, minlength=256)
    if np.count_nonzero(counts) < 2:
        return None  # a single value: nothing to separate
    centres = np.arange(256) / 255.0
    from skimage.filters import threshold_otsu  # here: 0.7 s to import, only when a mask is made

    otsu = float(threshold_otsu(hist=(counts, centres)))
    below, above = centres <= otsu, centres > otsu
    mean_below = np.average(centres[below], weights=counts[below])
    mean_above = np.average(centres[above], weights=counts[above])
    if mean_above - mean_below < min_contrast or mean_below > _MAX_GLASS_SATURATION:
        return None
    return max(otsu, floor)


def _clean(
    tissue: np.ndarray,
    mpp: float,
    min_area_um2: float,
    max_hole_um2: float,
    closing_um: float,
    opening_um: float,
) -> np.ndarray:
    """Morphological clean-up with sizes in µm, converted to mask pixels at ``mpp``."""
    tissue = _morphology(tissue, ndimage.binary_closing, round(closing_um / mpp))
    tissue = _morphology(tissue, ndimage.binary_opening, round(opening_um / mpp))
    pixel_area = mpp * mpp
    tissue = _fill_small_holes(tissue, max_hole_um2 / pixel_area)
    return _drop_small_components(tissue, min_area_um2 / pixel_area)


def _morphology(tissue: np.ndarray, operation: Any, radius: int) -> np.ndarray:
    if radius < 1:
        return tissue
    # Pad by repeating the border so the slide's edge does not erode tissue that touches it.
    padded = np.pad(tissue, radius, mode="edge")
    from skimage.morphology import disk  # see _saturation_threshold

    return operation(padded, structure=disk(radius))[radius:-radius, radius:-radius]


def _drop_small_components(tissue: np.ndarray, min_pixels: float) -> np.ndarray:
    """``tissue`` without 8-connected pieces smaller than ``min_pixels``.

    Done with scipy because scikit-image's remove_small_* changed signature between the
    versions we support.
    """
    if min_pixels <= 1 or not tissue.any():
        return tissue
    labels, count = ndimage.label(tissue, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _fill_small_holes(tissue: np.ndarray, max_pixels: float) -> np.ndarray:
    """``tissue`` with enclosed glass smaller than ``max_pixels`` filled.

    Glass that touches the slide's edge is never a hole; larger enclosed glass (a lumen,
    the gap between two pieces) stays glass so that patches are not placed on it.
    """
    if max_pixels <= 0 or not tissue.any():
        return tissue
    # 4-connected glass, the dual of 8-connected tissue: a diagonal tissue line encloses.
    labels, count = ndimage.label(~tissue)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_pixels
    fill[0] = False
    fill[border] = False
    return tissue | fill[labels]


def _summed_area_table(mask: np.ndarray) -> np.ndarray:
    """(H+1, W+1) table whose [i, j] is the number of tissue pixels in mask[:i, :j]."""
    h, w = mask.shape
    dtype = np.int32 if h * w < 2**31 else np.int64
    table = np.zeros((h + 1, w + 1), dtype)
    np.cumsum(mask, axis=0, dtype=dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


def _area_below(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tissue area in mask[:y, :x] at fractional x, y (clipped to the raster)."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x = np.clip(x, 0, w)
    y = np.clip(y, 0, h)
    i = np.minimum(np.floor(x).astype(np.intp), w - 1)
    j = np.minimum(np.floor(y).astype(np.intp), h - 1)
    fx, fy = x - i, y - j
    return (
        (1 - fy) * ((1 - fx) * table[j, i] + fx * table[j, i + 1])
        + fy * ((1 - fx) * table[j + 1, i] + fx * table[j + 1, i + 1])
    )


# ---- patch grid ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PatchGrid:
    """Patches of ``patch_size`` px at ``mpp`` µm/px, as level-0 top-left corners.

    Read patch ``i`` with ``slide.read_region(*coords[i], patch_size, mpp=mpp)``.
    """

    coords: np.ndarray  # (N, 2) int64 level-0 x, y
    mpp: float  # target µm/px
    patch_size: int  # px at the target mpp
    stride: int  # px at the target mpp between neighbouring patches
    level: int  # the pyramid level read_region(..., mpp=mpp) reads
    level_downsample: float
    patch_size_level0: float  # patch_size * mpp / slide.mpp
    step_level0: int  # level-0 px between neighbouring origins (nominal on a non-integer level)
    tissue: np.ndarray  # (N,) tissue fraction of each patch
    slide_dimensions: tuple[int, int]
    min_tissue: float = 0.0

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def magnification(self) -> str | None:
        """The name of ``mpp`` ("5x", "20x", ...) when it is a named magnification, else None."""
        return magnification_name(self.mpp)

    def bounds_level0(self) -> np.ndarray:
        """(N, 4) float level-0 boxes x0, y0, x1, y1."""
        start = self.coords.astype(np.float64)
        return np.concatenate([start, start + self.patch_size_level0], axis=1)


def patch_grid(
    slide: Slide,
    mpp: float | str = 2.0,
    patch_size: int = 224,
    stride: int | None = None,
    min_tissue: float = 0.25,
    mask: TissueMask | None = None,
) -> PatchGrid:
    """A grid of ``patch_size`` px patches at ``mpp`` (µm/px, or "5x", "20x") over the slide.

    The grid covers the whole slide: along each axis the last patch reaches or passes the
    edge. Patches are kept when at least ``min_tissue`` of their area is tissue; the part of
    an edge patch outside the slide counts as glass (read_region pads it with white).
    ``min_tissue=0`` keeps every patch. Origins sit on the pixel grid of the level that
    ``read_region`` reads, because OpenSlide reads misaligned regions of a downsampled level
    several times slower. Without ``mask``, one is computed with :func:`tissue_mask`'s
    defaults; pass it to build several grids from one mask.
    """
    target = parse_mpp(mpp)
    base = slide.require_mpp(f"{target:g} µm/px patches cannot be cut")
    stride = patch_size if stride is None else stride
    _check_grid_arguments(patch_size, stride, min_tissue)
    level, factor = slide.best_level_for_mpp(target)
    downsample = slide.levels[level].downsample
    # The step in whole level pixels: a read of stride target px spans round(stride * factor).
    step_level = max(1, round(stride * factor))
    size_level0 = patch_size * target / base
    width, height = slide.dimensions
    xs = _axis_origins(width, size_level0, step_level, downsample)
    ys = _axis_origins(height, size_level0, step_level, downsample)
    coords = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)
    if mask is None:
        mask = tissue_mask(slide)
    _check_mask_matches(mask, slide)
    tissue = mask.tissue_fractions(coords, size_level0)
    keep = tissue >= min_tissue
    return PatchGrid(
        coords=coords[keep],
        mpp=target,
        patch_size=patch_size,
        stride=stride,
        level=level,
        level_downsample=downsample,
        patch_size_level0=size_level0,
        step_level0=round(step_level * downsample),
        tissue=tissue[keep],
        slide_dimensions=(width, height),
        min_tissue=min_tissue,
    )


def _check_grid_arguments(patch_size: int, stride: int, min_tissue: float) -> None:
    if not (isinstance(patch_size, (int, np.integer)) and patch_size > 0):
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size!r}")
    if not (isinstance(stride, (int, np.integer)) and stride > 0):
        raise ValueError(f"stride must be a positive number of pixels, got {stride!r}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue is a fraction of the patch, between 0 and 1; got {min_tissue!r}")


def _check_mask_matches(mask: TissueMask, slide: Slide) -> None:
    """Refuse a mask made for another slide, or for this one at another mpp override."""
    expected = mask.mpp / slide.require_mpp()
    if not math.isclose(mask.downsample, expected, rel_tol=1e-3):
        raise ValueError(
            f"{slide.path}: the tissue mask ({mask.mpp:g} µm/px, downsample {mask.downsample:.4g})"
            f" was computed for another slide resolution (expected downsample {expected:.4g})"
        )
    width, height = slide.dimensions
    shape = (math.ceil(height / mask.downsample), math.ceil(width / mask.downsample))
    if any(abs(a - b) > 1 for a, b in zip(mask.shape, shape, strict=False)):
        raise ValueError(f"{slide.path}: the tissue mask is {mask.shape} px, this slide needs {shape}")


def _axis_origins(extent: int, size_level0: float, step_level: int, downsample: float) -> np.ndarray:
    """Level-0 origins along one axis: on the level's pixel grid, the last reaching ``extent``."""
    step_level0 = step_level * downsample
    count = 1 + max(0, math.ceil((extent - size_level0) / step_level0 - 1e-9))
    return np.round(np.arange(count) * step_level0).astype(np.int64)


# ---- pairing geometry ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PairGeometry:
    """How one student patch maps onto a square of teacher crops on the same tissue.

    A 5x patch of 224 px at 2.0 µm/px is 448 µm wide; the same field of view at 0.5 µm/px is
    one 896 px region, a 4x4 grid of 224 px teacher crops. Crop ``k`` is at row ``k // n``,
    column ``k % n``.
    """

    student_mpp: float
    student_patch_size: int
    teacher_mpp: float
    crop_size: int  # px at teacher_mpp
    crops_per_side: int
    teacher_level: int
    teacher_level_downsample: float
    crop_size_level0: float  # crop_size * teacher_mpp / slide.mpp
    region_size: int  # px at teacher_mpp: crops_per_side * crop_size
    region_size_level0: float

    @property
    def crops_per_patch(self) -> int:
        return self.crops_per_side**2

    def crop_offsets(self) -> np.ndarray:
        """(n*n, 2) level-0 x, y offsets of the crops from the patch origin, row-major."""
        row, col = np.divmod(np.arange(self.crops_per_patch), self.crops_per_side)
        return np.stack([col, row], axis=1) * self.crop_size_level0

    def crop_coords(self, coords: np.ndarray) -> np.ndarray:
        """(N, n*n, 2) int64 level-0 origins of the teacher crops of each patch origin."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 1, 2)
        origins = coords + self.crop_offsets()[None]
        # On the teacher level's pixel grid, as the student patches are on theirs.
        ds = self.teacher_level_downsample
        return np.round(np.round(origins / ds) * ds).astype(np.int64)

    def region(self, x: int, y: int) -> tuple[int, int, int]:
        """The teacher region of the patch at level-0 ``(x, y)``: ``(x, y, region_size)``.

        Read it with ``slide.read_region(x, y, region_size, mpp=teacher_mpp)``; ``split``
        cuts it into the crops.
        """
        return int(x), int(y), self.region_size

    def split(self, region: np.ndarray) -> np.ndarray:
        """A (region_size, region_size, C) image cut into (n*n, crop, crop, C) crops, row-major."""
        n, c = self.crops_per_side, self.crop_size
        if region.shape[:2] != (n * c, n * c):
            raise ValueError(f"expected a {n * c} px square region, got shape {region.shape}")
        tiles = region.reshape(n, c, n, c, *region.shape[2:]).swapaxes(1, 2)
        return tiles.reshape(n * n, c, c, *region.shape[2:])


def pair_geometry(
    grid: PatchGrid, slide: Slide, teacher_mpp: float | str = 0.5, crop_size: int = 224
) -> PairGeometry:
    """The pairing of ``grid``'s patches with teacher crops of ``crop_size`` px at ``teacher_mpp``.

    ``grid.patch_size * grid.mpp / (crop_size * teacher_mpp)`` crops per side must be a whole
    number, or the crops would not tile the patch's field of view: ValueError otherwise.
    """
    teacher = parse_mpp(teacher_mpp)
    base = slide.require_mpp(f"patches cannot be paired with crops at {teacher:g} µm/px")
    _check_grid_matches(grid, slide)
    per_side = _crops_per_side(grid.patch_size * grid.mpp, crop_size * teacher)
    level, _ = slide.best_level_for_mpp(teacher)
    return PairGeometry(
        student_mpp=grid.mpp,
        student_patch_size=grid.patch_size,
        teacher_mpp=teacher,
        crop_size=crop_size,
        crops_per_side=per_side,
        teacher_level=level,
        teacher_level_downsample=slide.levels[level].downsample,
        crop_size_level0=crop_size * teacher / base,
        region_size=per_side * crop_size,
        region_size_level0=per_side * crop_size * teacher / base,
    )


def _check_grid_matches(grid: PatchGrid, slide: Slide) -> None:
    if tuple(grid.slide_dimensions) != tuple(slide.dimensions):
        raise ValueError(
            f"{slide.path}: the grid was built for a {grid.slide_dimensions} slide,"
            f" this one is {slide.dimensions}"
        )


def _crops_per_side(patch_um: float, crop_um: float) -> int:
    ratio = patch_um / crop_um
    per_side = round(ratio)
    if per_side < 1 or abs(ratio - per_side) > _RATIO_TOLERANCE * ratio:
        raise ValueError(
            f"a {patch_um:g} µm patch is {ratio:.4g} teacher crops of {crop_um:g} µm wide;"
            " it must be a whole number for the crops to tile the patch"
        )
    return per_side


def teacher_crop_coords(
    grid_5x: PatchGrid, slide: Slide, teacher_mpp: float | str = 0.5, crop_size: int = 224
) -> np.ndarray:
    """(N, n*n, 2) int64 level-0 origins of the teacher crops of each student patch, row-major.

    For the default 5x grid (224 px at 2.0 µm/px) and 224 px crops at 0.5 µm/px, n = 4.
    """
    return pair_geometry(grid_5x, slide, teacher_mpp, crop_size).crop_coords(grid_5x.coords)


# ---- one slide's student patches and their teacher crops --------------------------------------
@dataclass(frozen=True, eq=False)
class SlidePairs:
    """A slide's 5x patch grid and the 20x pairing of its patches: what compare, distill, MIL
    and the magnification explorer all start from."""

    grid: PatchGrid
    pairs: PairGeometry
    mask: TissueMask | None

    @property
    def coords(self) -> np.ndarray:
        return self.grid.coords

    def crop_coords(self, coords: np.ndarray | None = None) -> np.ndarray:
        """(N, n*n, 2) level-0 origins of the teacher crops of ``coords`` (default: the grid's)."""
        return self.pairs.crop_coords(self.grid.coords if coords is None else coords)


def slide_pairs(
    slide: Slide,
    student_mpp: float | str = MAGNIFICATION_MPP["5x"],
    teacher_mpp: float | str = MAGNIFICATION_MPP["20x"],
    patch_size: int = 224,
    crop_size: int = 224,
    stride: int | None = None,
    min_tissue: float = 0.25,
    mask: TissueMask | None = None,
) -> SlidePairs:
    """The slide's grid of ``patch_size`` px patches at ``student_mpp`` with at least
    ``min_tissue`` tissue, and how each pairs with ``crop_size`` px crops at ``teacher_mpp``.

    The one place the 5x grid and its 20x pairing are made: a 224 px patch at 2.0 µm/px is
    448 µm, a 896 px region at 0.5 µm/px, 4 x 4 crops of 224 px.
    """
    mask = tissue_mask(slide) if mask is None else mask
    grid = patch_grid(slide, student_mpp, patch_size, stride, min_tissue, mask)
    return SlidePairs(grid, pair_geometry(grid, slide, teacher_mpp, crop_size), mask)


def patch_at(slide: Slide, point: tuple[float, float], mpp: float | str = MAGNIFICATION_MPP["5x"],
             patch_size: int = 224) -> PatchGrid:
    """A one-patch grid: the ``patch_size`` px patch at ``mpp`` centred on level-0 ``point`` (x, y),
    its origin on the pixel grid of the level ``read_region`` reads (as ``patch_grid``'s are)."""
    target = parse_mpp(mpp)
    base = slide.require_mpp(f"a {target:g} µm/px patch cannot be placed")
    level, _ = slide.best_level_for_mpp(target)
    ds = slide.levels[level].downsample
    size0 = patch_size * target / base
    x, y = (round(round((c - size0 / 2) / ds) * ds) for c in point)
    return PatchGrid(
        coords=np.array([[x, y]], np.int64), mpp=target, patch_size=patch_size, stride=patch_size,
        level=level, level_downsample=ds, patch_size_level0=size0, step_level0=round(size0),
        tissue=np.ones(1), slide_dimensions=slide.dimensions,
    )


def check_patch_fits(slide: Slide, mpp: float | str, patch_size: int, min_tissue: float) -> None:
    """Refuse a slide so small against one patch that no patch can be ``min_tissue`` slide
    (let alone tissue) as too small, rather than report it as having no tissue; cheap, so
    callers run it before any pixel is read."""
    slide_mpp = slide.require_mpp()
    target = parse_mpp(mpp)
    size = patch_size * target / slide_mpp
    width, height = slide.dimensions
    fits = min(1.0, width / size) * min(1.0, height / size)
    if fits >= min_tissue:
        return
    what = "smaller than one patch" if width < size and height < size else "narrower than one patch"
    raise SlideTooSmallError(
        f"{slide.path}: the slide is {what}: {width} x {height} px"
        f" ({width * slide_mpp:.0f} x {height * slide_mpp:.0f} µm)"
        f" against a {patch_size} px patch at {target:g} µm/px"
        f" ({patch_size * target:.0f} µm, {size:.0f} level-0 px), so at most"
        f" {fits * 100:.2g}% of a patch can be tissue, below the {min_tissue:.0%} tissue"
        " threshold; use a finer --mpp (e.g. 20x) or a smaller --patch-size"
    )


def require_patches(grid: PatchGrid, slide: Slide, mask: TissueMask | None = None, where: str = "") -> None:
    """The one :class:`NoTissueError` for a grid without patches: what was asked, how much
    tissue there is, and what to change."""
    if len(grid):
        return
    check_patch_fits(slide, grid.mpp, grid.patch_size, grid.min_tissue)
    if mask is not None and not mask.mask.any():  # lowering the threshold would not help
        raise NoTissueError(
            f"{slide.path}: no {grid.patch_size} px patch at {grid.mpp} µm/px{where} holds"
            f" {grid.min_tissue:.0%} tissue: tissue covers 0.0% of the slide (blank glass, or not a"
            " stained brightfield slide?)"
        )
    covered = f" (tissue covers {mask.tissue_fraction:.1%} of the slide)" if mask is not None else ""
    raise NoTissueError(
        f"{slide.path}: no {grid.patch_size} px patch at {grid.mpp} µm/px{where} holds"
        f" {grid.min_tissue:.0%} tissue{covered}; lower the tissue threshold (--tissue-threshold)"
        " if the tissue is small or sparse"
    )


# ---- report -------------------------------------------------------------------------------
def grid_report(slide: Slide, mask: TissueMask, grid_5x: PatchGrid, grid_20x: PatchGrid) -> dict[str, Any]:
    """Patch counts, the 20x/5x count ratio and tissue coverage of each grid, as plain values.

    Coverage is the fraction of the mask's tissue pixels whose centre lies in a kept patch;
    None when the mask has no tissue, as is the ratio when the 5x grid is empty.
    """
    _check_mask_matches(mask, slide)
    _check_grid_matches(grid_5x, slide)
    _check_grid_matches(grid_20x, slide)
    count_5x, count_20x = len(grid_5x), len(grid_20x)
    return {
        "slide": str(slide.path),
        "slide_mpp": slide.mpp,
        "mask_mpp": mask.mpp,
        "tissue_fraction": mask.tissue_fraction,
        "tissue_area_mm2": mask.tissue_area_um2 / 1e6,
        "mpp_5x": grid_5x.mpp,
        "mpp_20x": grid_20x.mpp,
        "level_5x": grid_5x.level,
        "level_20x": grid_20x.level,
        "patches_5x": count_5x,
        "patches_20x": count_20x,
        "ratio_20x_5x": count_20x / count_5x if count_5x else None,
        "coverage_5x": mask.coverage(grid_5x.coords, grid_5x.patch_size_level0),
        "coverage_20x": mask.coverage(grid_20x.coords, grid_20x.patch_size_level0),
    }
