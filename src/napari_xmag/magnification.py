"""The magnification explorer: one field of view read at 2.5x, 5x, 10x, 20x and 40x.

For teaching what magnification does. Every view is what ``Slide.read_region`` returns at
that resolution, so it shows which pyramid level was read and how it was resampled; a
magnification finer than the scan is enlarged and says so. Each view also carries how many
224 px tissue patches the whole slide gives at that magnification, and :meth:`footprint`
gives the 5x student patch and its 16 20x teacher crops around a point.

Knows nothing of napari or Qt. Coordinates:

- **level-0 px** are those of ``read_region``: pixel ``i`` covers ``[i, i + 1)``, so a box
  from ``x0`` to ``x0 + w`` is ``w`` pixels starting with pixel ``x0``;
- **µm** (``units="um"``) are napari world coordinates of the slide layer the reader makes
  (scale = mpp, no translate), where pixel ``i`` is *centred* at ``i * mpp``: level-0 ``x``
  is world ``(x - 0.5) * mpp``.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .slide import (
    MAGNIFICATION_MPP,
    STUDENT_MAGNIFICATION,
    TEACHER_MAGNIFICATION,
    MissingMppError,
    MissingMppWarning,
    Slide,
    level0_to_um,
    magnification_name,
    parse_mpp,
    um_to_level0,
)
from .tiling import PatchGrid, TissueMask, pair_geometry, patch_at, patch_grid, tissue_mask

__all__ = [
    "MAGNIFICATIONS",
    "FieldOfView",
    "Footprint",
    "Layout",
    "MagnificationView",
    "Outline",
    "Panel",
    "SlideExplorer",
    "explorer_for",
    "field_of_view",
    "layout",
    "rectangles",
    "scan_magnification",
    "side_by_side",
    "world_boxes",
]

#: What the explorer shows, coarse to fine: turning the objective turret up.
MAGNIFICATIONS = ("2.5x", "5x", "10x", "20x", "40x")
PATCH_SIZE = 224
STUDENT_MPP = MAGNIFICATION_MPP[STUDENT_MAGNIFICATION]
TEACHER_MPP = MAGNIFICATION_MPP[TEACHER_MAGNIFICATION]
#: The default field of view: one 5x student patch (224 px at 2.0 µm/px).
DEFAULT_FOV_UM = PATCH_SIZE * STUDENT_MPP
#: The multiplication sign of captions ("224 x 224 px", "enlarged 2x" with it in place of x).
TIMES = "\N{MULTIPLICATION SIGN}"
#: Largest view side in pixels; 40x of a 1 mm field is 4000 px.
MAX_VIEW_PX = 4096
# A resampling factor this close to 1 is no resampling (as in slide.py).
_TOLERANCE = 1e-3
# A scan within this relative distance of a named magnification is called by that name.
_NAME_TOLERANCE = 0.15


def scan_magnification(mpp: float) -> str:
    """The name of a level-0 resolution: ``"20x"`` for 0.499 µm/px, else ``"0.3 µm/px"``."""
    return magnification_name(mpp, _NAME_TOLERANCE) or f"{mpp:.3g} µm/px"


def _require_mpp(slide: Slide) -> tuple[float, float]:
    return slide.require_mpp_xy("its magnifications are unknown")


# ---- field of view ------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldOfView:
    """A rectangle of the slide: level-0 px ``[x0, x1) x [y0, y1)`` (floats) and its mpp."""

    x0: float
    y0: float
    x1: float
    y1: float
    mpp: tuple[float, float]  # level-0 µm/px (x, y)

    @property
    def centre(self) -> tuple[float, float]:
        """Level-0 (x, y)."""
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    @property
    def size_level0(self) -> tuple[float, float]:
        return self.x1 - self.x0, self.y1 - self.y0

    @property
    def size_um(self) -> tuple[float, float]:
        """Width and height in µm."""
        return (self.x1 - self.x0) * self.mpp[0], (self.y1 - self.y0) * self.mpp[1]

    @property
    def box_level0(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1])

    def box_um(self, translate: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
        """World box ``x0, y0, x1, y1`` in µm (``translate`` is the layer's, (y, x))."""
        return world_boxes(self.box_level0, self.mpp, translate)

    def pixels_at(self, mpp: float) -> tuple[int, int]:
        """Width and height in pixels at ``mpp`` µm/px."""
        w, h = self.size_um
        return max(1, round(w / mpp)), max(1, round(h / mpp))


def _to_level0(slide: Slide, values: Sequence[float], units: str) -> np.ndarray:
    """x, y pairs in level-0 px from ``units`` ("px": level-0 px, "um": world µm)."""
    mpp = _require_mpp(slide)
    values = np.asarray(values, dtype=np.float64)
    if units == "px":
        return values
    if units == "um":
        return um_to_level0(values, mpp)
    raise ValueError(f"units must be 'px' (level-0 pixels) or 'um' (world µm), got {units!r}")


def field_of_view(
    slide: Slide,
    point: Sequence[float] | None = None,
    box: Sequence[float] | None = None,
    size_um: float | Sequence[float] = DEFAULT_FOV_UM,
    units: str = "px",
) -> FieldOfView:
    """The field of view centred on ``point`` (x, y), ``size_um`` wide, or the rectangle ``box``.

    ``box`` is ``x0, y0, x1, y1``. Both are in ``units``: ``"px"`` (level-0 px) or ``"um"``
    (world µm of the slide layer). ``size_um`` is one side or (width, height). A point off
    the slide, or a box that misses it, is a ValueError: there is nothing to look at.
    """
    mpp = _require_mpp(slide)
    if (point is None) == (box is None):
        raise ValueError("give exactly one of point= or box=")
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"box is x0, y0, x1, y1; got {box!r}")
        x0, y0, x1, y1 = _to_level0(slide, box, units)
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"the box {tuple(box)} has no area")
        width, height = slide.dimensions
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ValueError(f"the box {_text(box, units)} is off the slide ({width} {TIMES} {height} px)")
        return FieldOfView(float(x0), float(y0), float(x1), float(y1), mpp)
    if len(point) != 2:
        raise ValueError(f"point is x, y; got {point!r}")
    width_um, height_um = (size_um, size_um) if np.isscalar(size_um) else size_um  # type: ignore[misc]
    if not (width_um > 0 and height_um > 0):
        raise ValueError(f"the field of view must be a positive size in µm, got {size_um!r}")
    cx, cy = _to_level0(slide, point, units)
    width, height = slide.dimensions
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise ValueError(f"the point {_text(point, units)} is off the slide ({width} {TIMES} {height} px)")
    w, h = width_um / mpp[0], height_um / mpp[1]
    return FieldOfView(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, mpp)


def _text(values: Sequence[float], units: str) -> str:
    unit = " µm" if units == "um" else " px"
    return "(" + ", ".join(f"{v:.0f}" for v in values) + ")" + unit


def world_boxes(
    boxes_level0: np.ndarray, mpp: Sequence[float], translate: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """Level-0 boxes ``(..., 4)`` x0, y0, x1, y1 as world µm boxes of the slide layer.

    Pixel ``i`` is centred at world ``i * mpp`` (+ the layer's ``translate``, given in napari's
    (y, x) order), so its left edge ``i`` is at ``(i - 0.5) * mpp``.
    """
    ty, tx = translate
    return level0_to_um(boxes_level0, mpp, (tx, ty))


def rectangles(boxes: np.ndarray) -> np.ndarray:
    """Boxes ``(N, 4)`` x0, y0, x1, y1 as (N, 4, 2) rectangle corners in (y, x) order."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T
    return np.stack(
        [np.stack([y0, x0], -1), np.stack([y0, x1], -1), np.stack([y1, x1], -1), np.stack([y1, x0], -1)],
        axis=1,
    )


# ---- one magnification --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MagnificationView:
    """A field of view as read at one magnification, with everything a caption needs."""

    magnification: str  # "20x"
    target_mpp: float  # the named resolution, µm/px
    image: np.ndarray  # (H, W, 3) uint8, what read_region returned
    mpp: tuple[float, float]  # effective µm/px (x, y) of image
    level: int  # pyramid level read
    level_mpp: float  # µm/px of that level
    scale: tuple[float, float]  # level px per image px (x, y): 1 = as stored, 2 = reduced 2x
    origin: tuple[int, int]  # level-0 x, y of the first pixel read
    scan: str  # the scan's magnification, "20x"
    patches: int | None = None  # 224 px tissue patches over the whole slide at this magnification

    @property
    def size_px(self) -> tuple[int, int]:
        """Width and height in pixels."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def pixels(self) -> int:
        return self.image.shape[0] * self.image.shape[1]

    @property
    def fov_um(self) -> tuple[float, float]:
        """Width and height of the view in µm: pixels times the effective µm/px."""
        w, h = self.size_px
        return w * self.mpp[0], h * self.mpp[1]

    @property
    def factor(self) -> float:
        """Resampling factor (level px per view px): 1 as stored, > 1 reduced, < 1 enlarged."""
        return self.scale[0]

    @property
    def enlarged(self) -> bool:
        """Finer than the scan: the pixels are interpolated, with no extra detail."""
        return self.factor < 1 - _TOLERANCE

    @property
    def resampling(self) -> str:
        """How the pixels were made, e.g. "level 0 (0.50 µm/px) reduced 2x"."""
        return f"level {self.level} ({self.level_mpp:.2f} µm/px) {_factor_text(self.factor)}"

    @property
    def note(self) -> str | None:
        """The warning a finer-than-scan view must carry, else None."""
        if self.enlarged:
            return f"enlarged from {self.scan} scan, no extra detail"
        return None

    @property
    def caption(self) -> str:
        """A few short lines for under the picture."""
        w, h = self.size_px
        lines = [
            f"{self.magnification} · {self.mpp[0]:.2f} µm/px",
            f"{w} {TIMES} {h} px",
            f"level {self.level} {_factor_symbol(self.factor)}",
        ]
        if self.patches is not None:
            lines.append(f"{self.patches:,} patch{'' if self.patches == 1 else 'es'} / slide")
        if self.note:
            lines += self.note.split(", ")
        return "\n".join(lines)

    def row(self) -> dict[str, Any]:
        """Plain values for a table: one row per magnification."""
        w, h = self.size_px
        fw, fh = self.fov_um
        return {
            "magnification": self.magnification,
            "µm/px": round(self.mpp[0], 4),
            "level": self.level,
            "resampling": _factor_symbol(self.factor),
            "field (µm)": f"{fw:.0f} {TIMES} {fh:.0f}",
            "pixels": f"{w} {TIMES} {h}",
            "patches/slide": "" if self.patches is None else self.patches,
            "note": self.note or "",
        }


def _factor_symbol(factor: float) -> str:
    """Short form for captions: "as stored", "÷ 4.008" (reduced) or TIMES + " 2" (enlarged)."""
    if abs(factor - 1) <= _TOLERANCE:
        return "as stored"
    symbol, amount = (TIMES, 1 / factor) if factor < 1 else ("÷", factor)
    return f"{symbol} {amount:.3f}".rstrip("0").rstrip(".")


def _factor_text(factor: float) -> str:
    """"as stored", "reduced 2x", "reduced 4.008x" (CMU-1's 0.499 µm/px) or "enlarged 2x"."""
    if abs(factor - 1) <= _TOLERANCE:
        return "as stored"
    verb, amount = ("enlarged", 1 / factor) if factor < 1 else ("reduced", factor)
    return f"{verb} {amount:.3f}".rstrip("0").rstrip(".") + TIMES


# ---- the student patch and its teacher crops ----------------------------------------------
@dataclass(frozen=True, eq=False)
class Footprint:
    """One 5x student patch and its teacher crops, as level-0 boxes x0, y0, x1, y1."""

    student: np.ndarray  # (4,) level-0 box of the student patch
    crops: np.ndarray  # (n*n, 4) level-0 boxes of the teacher crops, row-major
    mpp: tuple[float, float]  # level-0 µm/px of the slide
    student_mpp: float
    teacher_mpp: float
    patch_size: int  # student px
    crop_size: int  # teacher px

    @property
    def crops_per_side(self) -> int:
        return math.isqrt(len(self.crops))

    def student_um(self, translate: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
        return world_boxes(self.student, self.mpp, translate)

    def crops_um(self, translate: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
        return world_boxes(self.crops, self.mpp, translate)


# ---- the explorer -------------------------------------------------------------------------
class SlideExplorer:
    """Views of one slide at several magnifications; patch counts computed once, lazily.

    ``min_tissue`` is the tissue fraction a patch needs to count (as in ``patch_grid``).
    """

    def __init__(
        self,
        slide: Slide,
        magnifications: Sequence[str] = MAGNIFICATIONS,
        patch_size: int = PATCH_SIZE,
        min_tissue: float = 0.25,
    ) -> None:
        _require_mpp(slide)
        self.slide = slide
        self.magnifications = tuple(magnifications)
        for name in self.magnifications:
            parse_mpp(name)
        self.patch_size = patch_size
        self.min_tissue = min_tissue
        self._lock = threading.Lock()
        self._mask: TissueMask | None = None
        self._counts: dict[float, int] = {}

    @property
    def scan(self) -> str:
        """The scan's magnification by name ("20x"), or its µm/px."""
        return scan_magnification(self.slide.mpp)  # type: ignore[arg-type]

    @property
    def mask(self) -> TissueMask:
        with self._lock:
            if self._mask is None:
                self._mask = tissue_mask(self.slide)
            return self._mask

    def grid(self, magnification: float | str) -> PatchGrid:
        """The whole slide's tissue patches at ``magnification`` (``patch_grid`` with the mask).

        Finer than the scan (40x on a 20x scan), the grid is geometry alone: 224 px at
        0.25 µm/px is 112 level-0 px of a 0.5 µm/px scan; no pixel is read to count it.
        """
        return patch_grid(
            self.slide, magnification, self.patch_size, min_tissue=self.min_tissue, mask=self.mask
        )

    def patch_count(self, magnification: float | str) -> int:
        """How many ``patch_size`` px tissue patches the whole slide gives at ``magnification``."""
        target = parse_mpp(magnification)
        if target not in self._counts:
            self._counts[target] = len(self.grid(target))
        return self._counts[target]

    def patch_counts(self) -> dict[str, int]:
        return {name: self.patch_count(name) for name in self.magnifications}

    def view(self, fov: FieldOfView, magnification: str, patches: bool = True) -> MagnificationView:
        """``fov`` read at ``magnification`` with ``read_region``."""
        target = parse_mpp(magnification)
        size = fov.pixels_at(target)
        if max(size) > MAX_VIEW_PX:
            raise ValueError(
                f"a {fov.size_um[0]:.0f} {TIMES} {fov.size_um[1]:.0f} µm field at {magnification} is"
                f" {size[0]} {TIMES} {size[1]} px, more than {MAX_VIEW_PX} px a side; choose a smaller field"
            )
        region = self.slide.read_region(fov.x0, fov.y0, size, mpp=target)  # type: ignore[arg-type]
        return MagnificationView(
            magnification=magnification if isinstance(magnification, str) else f"{target:g} µm/px",
            target_mpp=target,
            image=region.image,
            mpp=region.mpp,
            level=region.level,
            level_mpp=self.slide.mpp * self.slide.levels[region.level].downsample,  # type: ignore[operator]
            scale=region.scale,
            origin=region.origin,
            # "40x enlarged from 40x scan" would puzzle: name a 0.263 µm/px scan by its µm/px there
            scan=self.scan if self.scan != magnification else f"{self.slide.mpp:.3g} µm/px",
            patches=self.patch_count(target) if patches else None,
        )

    def views(self, fov: FieldOfView, patches: bool = True) -> list[MagnificationView]:
        """``fov`` at every magnification, coarse to fine."""
        return [self.view(fov, name, patches) for name in self.magnifications]

    def footprint(
        self,
        point: Sequence[float],
        units: str = "px",
        student_mpp: float | str = STUDENT_MPP,
        teacher_mpp: float | str = TEACHER_MPP,
        crop_size: int = PATCH_SIZE,
    ) -> Footprint:
        """The student patch centred on ``point`` (x, y) and its teacher crops.

        The patch origin sits on the pixel grid of the level the student reads, as in
        ``patch_grid``, and the crops are ``pair_geometry``'s: 4 x 4 crops of 224 px at
        0.5 µm/px for a 224 px 5x patch (448 µm = 896 level-0 px on a 0.5 µm/px scan).
        """
        cx, cy = _to_level0(self.slide, point, units)
        grid = patch_at(self.slide, (cx, cy), student_mpp, self.patch_size)
        (x, y), size0 = grid.coords[0].tolist(), grid.patch_size_level0
        pairs = pair_geometry(grid, self.slide, teacher_mpp, crop_size)
        origins = pairs.crop_coords(grid.coords)[0].astype(np.float64)
        crops = np.concatenate([origins, origins + pairs.crop_size_level0], axis=1)
        return Footprint(
            student=np.array([x, y, x + size0, y + size0], np.float64),
            crops=crops,
            mpp=_require_mpp(self.slide),
            student_mpp=grid.mpp,
            teacher_mpp=pairs.teacher_mpp,
            patch_size=self.patch_size,
            crop_size=crop_size,
        )


@functools.lru_cache(maxsize=4)
def _cached_explorer(path: str, mpp: float | None, mtime: float) -> SlideExplorer:
    with warnings.catch_warnings():  # without an mpp, SlideExplorer's MissingMppError says it all
        warnings.simplefilter("ignore", MissingMppWarning)
        slide = Slide(path, mpp=mpp)
    try:
        return SlideExplorer(slide)
    except MissingMppError:
        slide.close()
        raise


def explorer_for(path: str | os.PathLike[str], mpp: float | None = None) -> SlideExplorer:
    """A :class:`SlideExplorer` for the slide file, shared by callers so its counts are cached.

    Keeps the four most recently used slides open; a file changed on disk is reopened.
    """
    path = os.fspath(path)
    return _cached_explorer(path, mpp, Path(path).stat().st_mtime)


# ---- layout: the views side by side -------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Panel:
    """Where one view goes in world µm: napari ``scale`` and ``translate`` in (y, x) order."""

    view: MagnificationView
    scale: tuple[float, float]  # (y, x) µm per view pixel: the effective mpp
    translate: tuple[float, float]  # (y, x) world centre of view pixel (0, 0)
    box: np.ndarray = field(repr=False)  # world x0, y0, x1, y1 of the picture's edges

    @property
    def caption_at(self) -> tuple[float, float]:
        """(y, x) world point just below the picture's left edge."""
        x0, _, _, y1 = self.box
        return y1, x0


def side_by_side(
    views: Sequence[MagnificationView], left: float, top: float, gap: float | None = None
) -> list[Panel]:
    """Lay the views out in a row from world ``(left, top)`` µm, each at its physical size.

    Every view is scaled by its effective µm/px, so the same field of view is the same size on
    screen whatever its pixel count: a coarse view simply has bigger pixels. ``gap`` defaults
    to a fifth of the widest view.
    """
    widths = [v.fov_um[0] for v in views]
    if gap is None:
        gap = 0.2 * max(widths, default=0.0)
    panels = []
    x = float(left)
    for view, width in zip(views, widths, strict=True):
        mx, my = view.mpp
        height = view.fov_um[1]
        panels.append(
            Panel(
                view=view,
                scale=(my, mx),
                translate=(top + my / 2, x + mx / 2),
                box=np.array([x, top, x + width, top + height]),
            )
        )
        x += width + gap
    return panels


@dataclass(frozen=True)
class Outline:
    """A rectangle to draw, in world µm: ``box`` is x0, y0, x1, y1."""

    box: np.ndarray
    kind: str  # "student", "teacher" or "field"
    label: str = ""


@dataclass(frozen=True, eq=False)
class Layout:
    """The comparison row beside the slide, in world µm of the slide layer."""

    panels: list[Panel]
    title: str
    title_at: tuple[float, float]  # (y, x) above the first picture's left edge, room for a label
    row_box: np.ndarray  # x0, y0, x1, y1 around every picture
    field_box: np.ndarray  # x0, y0, x1, y1 of the field of view on the slide

    def panel(self, magnification: str) -> Panel | None:
        return next((p for p in self.panels if p.view.magnification == magnification), None)

    def to_panel(self, boxes: np.ndarray, panel: Panel) -> np.ndarray:
        """World boxes on the slide moved onto ``panel``, which shows the field at its physical size."""
        fx0, fy0, fx1, fy1 = self.field_box
        px0, py0, px1, py1 = panel.box
        scale = np.array([(px1 - px0) / (fx1 - fx0), (py1 - py0) / (fy1 - fy0)] * 2)
        origin_field = np.array([fx0, fy0, fx0, fy0])
        origin_panel = np.array([px0, py0, px0, py0])
        return (np.asarray(boxes, dtype=np.float64) - origin_field) * scale + origin_panel

    def outlines(self, footprint: Footprint, translate: Sequence[float] = (0.0, 0.0)) -> list[Outline]:
        """The footprint on the slide, and again on the 5x and 20x pictures.

        On the slide: the student patch, its teacher crops, and the field of view when it is
        not the student patch. On the 5x picture the student patch, on the 20x picture the
        teacher crops: what each model is fed, on the pixels it is fed.
        """
        student = footprint.student_um(translate)
        crops = footprint.crops_um(translate)
        n = len(footprint.crops)
        size = f"{footprint.patch_size} px"
        out = [Outline(student, "student", f"5x student patch ({size})")]
        out += [Outline(box, "teacher") for box in crops]
        if not np.allclose(self.field_box, student, atol=0.01 * (student[2] - student[0])):
            out.append(Outline(self.field_box, "field", "field of view"))
        # On the pictures only when the field holds the whole patch: a smaller field would
        # need the outline cut, and a cut outline no longer shows what a model is fed.
        fx0, fy0, fx1, fy1 = self.field_box
        tolerance = 0.01 * (student[2] - student[0])
        holds = (student[0] >= fx0 - tolerance and student[1] >= fy0 - tolerance
                 and student[2] <= fx1 + tolerance and student[3] <= fy1 + tolerance)
        student_panel = self.panel(_name_of(footprint.student_mpp))
        if holds and student_panel is not None:
            out.append(Outline(self.to_panel(student, student_panel), "student", f"student input: {size}"))
        teacher_panel = self.panel(_name_of(footprint.teacher_mpp))
        if holds and teacher_panel is not None:
            moved = self.to_panel(crops, teacher_panel)
            label = f"teacher input: {n} {TIMES} {footprint.crop_size} px"
            out += [Outline(box, "teacher", label if i == 0 else "") for i, box in enumerate(moved)]
        return out


def _name_of(mpp: float) -> str:
    return magnification_name(mpp) or f"{mpp:g}"


def layout(
    views: Sequence[MagnificationView],
    fov: FieldOfView,
    slide: Slide,
    translate: Sequence[float] = (0.0, 0.0),
    gap: float | None = None,
) -> Layout:
    """The views in a row to the right of the slide, level with the field of view.

    ``translate`` is the slide layer's, (y, x). Each picture has the physical size of the
    field (see :func:`side_by_side`), so a teacher compares detail, not size.
    """
    width, height = slide.dimensions
    slide_box = world_boxes(np.array([0, 0, width, height]), _require_mpp(slide), translate)
    field_box = fov.box_um(translate)
    if gap is None:  # room for the captions, which are as wide as the pictures at a typical zoom
        gap = 0.2 * max((v.fov_um[0] for v in views), default=0.0)
    panels = side_by_side(views, left=slide_box[2] + 2 * gap, top=field_box[1], gap=gap)
    if panels:
        corners = np.array([p.box for p in panels])
        row_box = np.concatenate([corners[:, :2].min(0), corners[:, 2:].max(0)])
    else:
        row_box = field_box.copy()
    fw, fh = fov.size_um
    mpp = float(slide.mpp)  # type: ignore[arg-type]
    title = (
        f"The same {fw:.0f} {TIMES} {fh:.0f} µm field at {len(views)} magnifications"
        f"  ·  {slide.name}, scanned at {scan_magnification(mpp)} ({mpp:.3f} µm/px)"
    )
    return Layout(
        panels=panels,
        title=title,
        # A line of outline labels ("student input") sits between the title and the pictures.
        title_at=(float(row_box[1] - 0.15 * fh), float(row_box[0])),
        row_box=row_box,
        field_box=field_box,
    )
