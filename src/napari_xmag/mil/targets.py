"""Teacher targets for fine-tuning: the teacher CLS of the 16 20x crops of every 5x patch.

Computed once per slide with the frozen teacher into ``<cache>/<stem>.zarr``, the package's one
teacher-target cache (:class:`napari_xmag.distill.cache.TeacherCache`, built here without flips
and without the 5x images), then read per training step for the patches the step samples: the
teacher (681M parameters for UNI2-h) is never in memory during training and never runs twice on
the same crop. A cache made for other patches or another teacher is refused, naming why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..distill.cache import CacheMismatchError, TeacherCache, build_teacher_cache
from ..distill.pairs import PairIndex, PairSettings
from ..provenance import model_identity
from ..slide_list import SlideEntry
from ..tiling import PairGeometry
from .data import MILError

__all__ = ["cache_teacher_targets", "read_targets", "slide_index"]


def slide_index(path: Path, coords: np.ndarray, pairs: PairGeometry, settings: PairSettings,
                mpp_override: float | None = None) -> PairIndex:
    """The pairs of one slide's 5x patches, as the teacher cache addresses them."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    return PairIndex((SlideEntry(Path(path), mpp_override),), (pairs,), settings,
                     np.zeros(len(coords), np.int32), coords)


def cache_teacher_targets(index: PairIndex, stem: str, teacher: Any, cache_dir: str | os.PathLike[str], *,
                          batch_size: int = 8, progress: bool = False) -> Path:
    """``cache_dir/<stem>.zarr``: the teacher CLS of every crop of every patch of one slide,
    built on first use; an existing cache is reused when it serves these patches and this teacher."""
    path = Path(cache_dir) / f"{stem}.zarr"
    if not path.exists():
        build_teacher_cache(path, index, teacher, flips=False, images=False, batch_size=batch_size,
                            progress=progress)
    try:
        TeacherCache(path).check(index, model_identity(teacher), flips=False)
    except CacheMismatchError as err:
        raise MILError(f"{err} (the teacher cache of fine-tuning: delete it or use another --teacher-cache)")\
            from None
    return path


def read_targets(path: Path, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, distinct) as (len(idx), n*n, D) float32."""
    return TeacherCache(path).rows(np.asarray(idx, np.int64))
