"""Teacher targets for fine-tuning: the teacher CLS of the 16 20x crops of every 5x patch.

Computed once per slide with the frozen teacher and cached as ``<cache>/<stem>.h5``, then read
per training step for the patches the step samples, so the teacher (681M parameters for
UNI2-h) is never in memory during training and never runs twice on the same crop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from .._atomic import atomic_path
from .._paths import file_problem
from ..formats.h5 import format_kind
from .data import MILError

if TYPE_CHECKING:
    from .finetune import FinetuneSettings, SlideBag

__all__ = ["TARGETS_FORMAT", "cache_teacher_targets", "read_targets"]

TARGETS_FORMAT = "napari-xmag-teacher-targets"
TARGETS_KIND = format_kind("teacher targets file", TARGETS_FORMAT)


def cache_teacher_targets(
    bag: SlideBag, teacher: Any, cache_dir: str | os.PathLike[str], settings: FinetuneSettings
) -> Path:
    """``cache_dir/<stem>.h5`` with the teacher CLS of every crop of every patch of the slide.

    Layout: ``coords`` (N, 2) the 5x patch origins, ``crop_coords`` (N, n*n, 2),
    ``teacher_cls`` (N, n*n, D) float16 (cosine targets need no more; half the disk and
    I/O), attributes naming the teacher and its weights. An existing file is reused when its
    coords and teacher match; a ``.npy`` (N, n*n, D) array, or a zarr/h5 with ``teacher_cls``,
    made elsewhere in the same patch order is used as it is.
    """
    from ..embed import embed_patches, iter_patch_batches

    assert bag.crops is not None  # distillation bags have crops
    cache_dir = Path(cache_dir)
    for suffix in (".h5", ".zarr", ".npy"):
        existing = cache_dir / f"{bag.stem}{suffix}"
        if existing.exists():
            _check_targets(existing, bag, teacher)
            return existing
    n, per = bag.crops.shape[:2]
    batches = iter_patch_batches(bag.path, bag.crops.reshape(-1, 2), settings.teacher_mpp, bag.crop_size,
                                 settings.batch_size, settings.workers, settings.mpp_override)
    feats, _ = embed_patches(teacher, batches, n * per, device=settings.device, precision=settings.precision,
                             progress=False, description=f"teacher {bag.stem}")
    cls = feats[:, : teacher.width].reshape(n, per, -1)  # the class token (cls+mean models: first half)
    return _write_targets(cache_dir / f"{bag.stem}.h5", bag, cls, teacher, settings)


def _write_targets(
    path: Path, bag: SlideBag, cls: np.ndarray, teacher: Any, settings: FinetuneSettings
) -> Path:
    import h5py

    with atomic_path(path, TARGETS_KIND) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=bag.coords)
        f.create_dataset("crop_coords", data=bag.crops)
        f.create_dataset("teacher_cls", data=cls.astype(np.float16))
        f.attrs.update({
            "format": TARGETS_FORMAT, "teacher": teacher.spec.name,
            "weights_source": teacher.weights.source, "weights_sha256": teacher.weights.sha256 or "",
            "teacher_mpp": settings.teacher_mpp, "crop_size": bag.crop_size, "slide": str(bag.path),
            "student_mpp": settings.mpp, "patch_size": settings.patch_size, "xmag_version": __version__,
        })
    return path


def _check_targets(path: Path, bag: SlideBag, teacher: Any) -> None:
    """Refuse a cache made for other patches or another teacher, naming what differs."""
    with _open_targets(path) as (cls, coords, attrs):
        n, per = bag.crops.shape[:2]  # type: ignore[union-attr]
        problems = []
        if tuple(cls.shape[:2]) != (n, per):
            problems.append(f"shape {tuple(cls.shape)} for {n} patches x {per} crops")
        elif coords is not None and not np.array_equal(np.asarray(coords[:]), bag.coords):
            problems.append("its coords are not this slide's patch grid")
        if cls.shape[-1] != teacher.width:
            problems.append(f"width {cls.shape[-1]}, the teacher's is {teacher.width}")
        for key, value in (("teacher", teacher.spec.name), ("weights_sha256", teacher.weights.sha256 or "")):
            if key in attrs and attrs[key] != value:
                problems.append(f"{key} {attrs[key]!r}, not {value!r}")
    if problems:
        raise MILError(f"{path}: teacher targets do not fit ({'; '.join(problems)}); delete it or use"
                       " another --teacher-cache")


@contextlib.contextmanager
def _open_targets(path: Path) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """(teacher_cls array-like, coords or None, attributes) of an h5, zarr or npy cache."""
    from ..formats import h5
    from ..formats import zarr as zarr_store

    if path.suffix == ".npy":
        problem = file_problem(path)
        if problem:
            raise MILError(f"{path}: {problem}")
        try:
            yield np.load(path, mmap_mode="r", allow_pickle=False), None, {}
        except ValueError as err:
            raise MILError(f"{path}: not readable teacher targets ({err})") from None
    elif path.suffix == ".zarr":
        root = zarr_store.open_group(path, MILError, "teacher targets store")
        coords = zarr_store.array(root, "coords", path, MILError) if "coords" in root else None
        yield zarr_store.array(root, "teacher_cls", path, MILError, min_written=1.0), coords, dict(root.attrs)
    else:
        with h5.open_h5(path, MILError, "teacher targets file") as f:
            coords = h5.dataset(f, "coords", path, MILError) if "coords" in f else None
            yield h5.dataset(f, "teacher_cls", path, MILError), coords, dict(f.attrs)


def read_targets(path: Path, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, distinct: what h5py fancy indexing takes) as float32."""
    with _open_targets(path) as (cls, _, _):
        if path.suffix == ".zarr":
            return np.asarray(cls.get_orthogonal_selection((idx, slice(None), slice(None))), np.float32)
        return np.asarray(cls[idx], np.float32)
