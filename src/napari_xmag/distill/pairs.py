"""Training pairs: a 5x student image and the 4x4 teacher crops of the same field of view.

The pairs of a set of slides are the 5x tissue grid of each slide and its pairing geometry
(:func:`napari_xmag.tiling.slide_pairs`, with a stride for overlap): the
student sees a 224 px patch at 2.0 µm/px, the teacher the same 448 µm field as a 896 px
region at 0.5 µm/px cut into 16 crops of 224 px, row-major.

:class:`PairIndex` is the list of pairs (plain numpy, cheap to pickle to workers);
:class:`PairDataset` reads them. Each DataLoader worker opens its own OpenSlide handles,
lazily, on first use.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..slide import Slide, parse_mpp
from ..slide_list import SlideEntry, SlideListError, find_slides
from ..stain import STAIN_METHODS, StainNormalizer, fit_stain_normalizer
from ..tiling import PairGeometry, slide_pairs
from .augment import JITTER_STYLES, View, apply_view, draw_views, grey_level, view_rng

__all__ = [
    "FIVE_X_SOURCES",
    "PairDataset",
    "PairIndex",
    "PairSettings",
    "SlideEntry",
    "SlideListError",
    "check_jitter",
    "read_pair",
    "read_slide_list",
]

#: How the student's 5x image is made: read from the slide at the student mpp, or the
#: teacher's region downsampled (PIL Lanczos), as the paper's code does.
FIVE_X_SOURCES = ("read", "downsample")
# Open slides kept per worker; more slides than this are reopened as needed.
_MAX_OPEN_SLIDES = 16


def read_slide_list(source: str | os.PathLike[str] | Sequence[Any]) -> list[SlideEntry]:
    """Training slides from a folder, a ``.csv``/``.txt`` list, or a list of paths,
    :class:`SlideEntry` or ``{"slide": path, "mpp_override": um}`` dicts (see
    :func:`napari_xmag.slide_list.find_slides`)."""
    if isinstance(source, (str, os.PathLike)):
        return find_slides(source)
    entries = [_entry(s) for s in source]
    if not entries:
        raise SlideListError("no training slides given")
    return find_slides(entries)


def _entry(item: Any) -> SlideEntry | Path:
    if isinstance(item, dict):
        if "slide" not in item:
            raise SlideListError(f"a slide given as a mapping needs a 'slide' key: {item!r}")
        override = item.get("mpp_override")
        return SlideEntry(Path(item["slide"]).expanduser(), None if override is None else parse_mpp(override))
    return item


# ---- the pairs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PairSettings:
    """How pairs are cut. The defaults are XMAG's: 224 px at 5x against 4x4 crops of 224 px at 20x."""

    student_mpp: float = 2.0
    teacher_mpp: float = 0.5
    patch_size: int = 224  # student px
    crop_size: int = 224  # teacher px
    stride: int | None = None  # student px between neighbouring patches; None = patch_size
    min_tissue: float = 0.25
    five_x_source: str = "read"
    stain_norm: str = "none"  # none, macenko or reinhard: both images of a pair, fitted per slide
    stain_reference: str | None = None  # an image to normalise to; None: the bundled default

    def __post_init__(self) -> None:
        object.__setattr__(self, "student_mpp", parse_mpp(self.student_mpp))
        object.__setattr__(self, "teacher_mpp", parse_mpp(self.teacher_mpp))
        if self.five_x_source not in FIVE_X_SOURCES:
            raise ValueError(f"five_x_source must be one of {FIVE_X_SOURCES}, not {self.five_x_source!r}")
        if self.stain_norm not in STAIN_METHODS:
            raise ValueError(f"stain_norm must be one of {', '.join(STAIN_METHODS)}, not {self.stain_norm!r}")


@dataclass(frozen=True, eq=False)
class PairIndex:
    """Every pair of a set of slides: slide number and level-0 origin of its field of view.

    ``rows`` numbers the pairs in the full index (a subset keeps the numbers of the pairs it
    holds), which is how a teacher cache built over the full index is addressed.
    """

    slides: tuple[SlideEntry, ...]
    geometries: tuple[PairGeometry, ...]  # one per slide
    settings: PairSettings
    slide: np.ndarray  # (N,) int32 slide number
    coords: np.ndarray  # (N, 2) int64 level-0 x, y of the field of view
    rows: np.ndarray = field(default=None)  # type: ignore[assignment]  # (N,) int64
    normalizers: tuple[StainNormalizer | None, ...] = ()  # one per slide, fitted once at build

    def __post_init__(self) -> None:
        if self.rows is None:
            object.__setattr__(self, "rows", np.arange(len(self.coords), dtype=np.int64))
        if not self.normalizers:
            object.__setattr__(self, "normalizers", (None,) * len(self.slides))

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def crops_per_pair(self) -> int:
        return self.geometries[0].crops_per_patch if self.geometries else 0

    @classmethod
    def build(cls, slides: Sequence[SlideEntry], settings: PairSettings | None = None) -> PairIndex:
        """Tissue mask, 5x grid and pairing geometry of each slide (each opened once, here)."""
        settings = settings or PairSettings()
        geometries, slide_numbers, coords, normalizers = [], [], [], []
        for number, entry in enumerate(slides):
            with Slide(entry.path, mpp=entry.mpp_override) as slide:
                slide.require_mpp("its 5x and 20x fields cannot be paired (give it an mpp_override: a"
                                  " column of the slide CSV)")
                paired = slide_pairs(
                    slide, settings.student_mpp, settings.teacher_mpp, settings.patch_size,
                    settings.crop_size, settings.stride, settings.min_tissue,
                )
                grid = paired.grid
                geometries.append(paired.pairs)
                normalizers.append(fit_stain_normalizer(slide, settings.stain_norm, settings.stain_reference))
            slide_numbers.append(np.full(len(grid), number, np.int32))
            coords.append(grid.coords.astype(np.int64))
        return cls(
            tuple(slides), tuple(geometries), settings,
            np.concatenate(slide_numbers) if slide_numbers else np.zeros(0, np.int32),
            np.concatenate(coords) if coords else np.zeros((0, 2), np.int64),
            normalizers=tuple(normalizers),
        )

    def subset(self, positions: np.ndarray | Sequence[int]) -> PairIndex:
        positions = np.asarray(positions, dtype=np.int64)
        return PairIndex(
            self.slides, self.geometries, self.settings,
            self.slide[positions], self.coords[positions], self.rows[positions], self.normalizers,
        )

    def fingerprint(self) -> str:
        """SHA-256 of what defines the pairs: slides, settings, origins (not the subset)."""
        h = hashlib.sha256()
        for entry in self.slides:
            h.update(f"{entry.path.resolve()}|{entry.mpp_override}\n".encode())
        # settings at their defaults from before stain normalisation leave the hash as it was,
        # so caches built then stay valid
        settings = {k: v for k, v in asdict(self.settings).items()
                    if not (k in ("stain_norm", "stain_reference") and v in ("none", None))}
        h.update(repr(sorted(settings.items())).encode())
        h.update(np.ascontiguousarray(self.slide, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(self.coords, dtype="<i8").tobytes())
        return h.hexdigest()


def check_jitter(jitter_p: float, jitter_style: str) -> None:
    if not 0 <= jitter_p <= 1:
        raise ValueError(f"jitter_p is a probability in [0, 1], got {jitter_p!r}")
    if jitter_style not in JITTER_STYLES:
        raise ValueError(f"jitter_style must be one of {JITTER_STYLES}, not {jitter_style!r}")


def read_region(slide: Slide, geometry: PairGeometry, x: int, y: int,
                normalizer: StainNormalizer | None = None) -> np.ndarray:
    """The teacher region (R, R, 3) of the field at ``(x, y)``, stain-normalised when asked."""
    region = slide.read_region(*geometry.region(x, y), mpp=geometry.teacher_mpp).image
    return normalizer(region) if normalizer is not None else region


def read_pair(
    slide: Slide, geometry: PairGeometry, x: int, y: int, five_x_source: str = "read",
    normalizer: StainNormalizer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The student image (S, S, 3) and the teacher region (R, R, 3) of the field at ``(x, y)``,
    stain-normalised by ``normalizer`` (the slide's) when given."""
    region = read_region(slide, geometry, x, y, normalizer)
    size = geometry.student_patch_size
    if five_x_source == "read":
        student = slide.read_region(x, y, size, mpp=geometry.student_mpp).image
        if normalizer is not None:
            student = normalizer(student)
    else:  # the paper's way: the 20x region reduced to 5x
        student = np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.LANCZOS))
    return student, region


class PairDataset(Dataset):
    """Reads pairs and makes ``views`` augmented views of each.

    An item is keyed by ``index`` or ``(index, epoch)`` (the epoch seeds the augmentation;
    see :mod:`~napari_xmag.distill.augment`) and is a dict of numpy arrays:

    - ``student``: (V, S, S, 3) uint8, the 5x images;
    - ``teacher``: (V, n*n, C, C, 3) uint8, the teacher crops, row-major in each view's frame;
      or, with a teacher ``cache``, ``target``: (V, n*n, D) float32, the cached teacher CLS of
      each view's flip variant (the student images then come from the cache too);
    - with a cache and jitter, also ``live``: (V,) bool, the jittered views, whose targets the
      cache cannot hold: for those ``teacher`` has the jittered crops (zeros elsewhere) and the
      trainer runs the teacher on them, so every target stays exact;
    - ``index``, ``row``, ``slide``, ``coords``.

    ``jitter_p`` is the chance each view's colours are augmented, ``jitter_style`` how, and
    ``stain_sigma`` the strength of stain augmentation (see :mod:`~napari_xmag.distill.augment`).
    ``fixed_views`` replaces the random views by the same
    list for every item (the cache builder asks for the four flip variants).
    """

    def __init__(
        self,
        index: PairIndex,
        *,
        views: int = 2,
        flips: bool = True,
        jitter: bool = True,
        seed: int = 0,
        cache: Any = None,
        fixed_views: Sequence[View] | None = None,
        jitter_p: float = 1.0,
        jitter_style: str = "shared",
        stain_sigma: float = 0.0,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be at least 1, got {views}")
        check_jitter(jitter_p, jitter_style)
        if cache is not None and flips and cache.variants < 4:
            raise ValueError(f"{cache.path}: the cache was built without flip variants; train without flips")
        self.index = index
        self.views = views
        self.flips = flips
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.jitter_style = jitter_style
        self.stain_sigma = stain_sigma
        self.seed = seed
        self.cache = cache
        self.fixed_views = list(fixed_views) if fixed_views is not None else None
        self._handles: OrderedDict[int, Slide] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # handles never travel to another process
        return state

    def _slide(self, number: int) -> Slide:
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours to use
            self._handles, self._pid = OrderedDict(), os.getpid()
        slide = self._handles.get(number)
        if slide is None:
            entry = self.index.slides[number]
            slide = self._handles[number] = Slide(entry.path, mpp=entry.mpp_override)
            if len(self._handles) > _MAX_OPEN_SLIDES:
                self._handles.popitem(last=False)[1].close()
        self._handles.move_to_end(number)
        return slide

    def close(self) -> None:
        if self._pid == os.getpid():
            for slide in self._handles.values():
                slide.close()
        self._handles = OrderedDict()

    def draw(self, position: int, epoch: int) -> list[View]:
        if self.fixed_views is not None:
            return self.fixed_views
        rng = view_rng(self.seed, epoch, int(self.index.rows[position]))
        return draw_views(rng, self.views, flips=self.flips, jitter=self.jitter, jitter_p=self.jitter_p,
                          stain_sigma=self.stain_sigma)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        position, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        position = int(position)
        number = int(self.index.slide[position])
        x, y = (int(v) for v in self.index.coords[position])
        row = int(self.index.rows[position])
        views = self.draw(position, int(epoch))
        item: dict[str, Any] = {
            "index": position, "row": row, "slide": number, "coords": self.index.coords[position],
        }
        geometry = self.index.geometries[number]
        style = self.jitter_style
        if self.cache is not None:
            student = self.cache.student(row)
            item["target"] = self.cache.targets(row, [v.variant for v in views])
            if not (self.jitter or self.stain_sigma > 0):
                item["student"] = np.stack([apply_view(student, v, 0.0) for v in views])
                return item
            # jittered views: the teacher runs on their crops (the region is read only for them)
            live = np.array([v.jittered for v in views])
            normalizer = self.index.normalizers[number]
            region = read_region(self._slide(number), geometry, x, y, normalizer) if live.any() else None
            grey = grey_level(region) if region is not None else 0.0
            c = geometry.crop_size  # zeros for the cached views: every item of a batch has one shape
            crops = np.zeros((len(views), geometry.crops_per_patch, c, c, 3), np.uint8)
            for k, v in enumerate(views):
                if live[k]:
                    crops[k] = geometry.split(apply_view(region, v, grey, style))
            item["student"] = np.stack([apply_view(student, v, grey, style) for v in views])
            item["teacher"], item["live"] = crops, live
            return item
        student, region = read_pair(self._slide(number), geometry, x, y, self.index.settings.five_x_source,
                                    self.index.normalizers[number])
        grey = grey_level(region) if any(v.jittered for v in views) else 0.0
        item["student"] = np.stack([apply_view(student, v, grey, style) for v in views])
        item["teacher"] = np.stack([geometry.split(apply_view(region, v, grey, style)) for v in views])
        return item


