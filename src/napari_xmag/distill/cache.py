"""A zarr cache of teacher targets, so that multi-epoch training costs student passes only.

The teacher is frozen, so its CLS vectors for a field of view never change, except that
augmentation changes its input:

- **Flips** change the teacher's output (a ViT is not flip-invariant), so the cache stores
  one target per flip variant: ``teacher`` is ``(N, 4, n*n, D)``, variants none, h, v, hv
  (:data:`~napari_xmag.distill.augment.FLIP_VARIANTS`), each computed on the crops of the
  flipped region. That is 4 teacher passes per pair, once. A cache built with
  ``flips=False`` stores the un-flipped variant only (``(N, 1, n*n, D)``, a quarter of the
  cost) and can only serve runs without flips.
- **Colour jitter** is continuous and cannot be cached. The cache serves the views that are
  not jittered; a jittered view's targets come from the live teacher on its jittered crops
  (the dataset reads the region for it and marks it ``live``), so every target is exact. With
  the released jitter chance of 0.5, half the views need no teacher. At our default chance
  of 1 every view would be live, so a cached run of our recipe trains without jitter unless
  asked (``jitter=None``); jittering the student alone against un-jittered targets would be
  another objective (colour invariance) and is never done.

``student`` holds the un-augmented 5x image of each pair ``(N, S, S, 3)`` uint8, so that a
cached epoch never opens a slide (``images=False`` leaves it out: fine-tuning reads its patches
itself). Targets are float16 (cosine targets; half the space). The one teacher-target cache of
the package: distillation builds one over all its slides, MIL fine-tuning one per slide.

Sizes per pair at XMAG's defaults (UNI2-h, D = 1536): teacher targets 4 x 16 x 1536 x 2 B =
192 KiB, the student image 147 KiB before compression. 100 000 pairs: ~34 GB.

Teacher cost (one pass = the teacher on the 16 crops of a pair): building takes 4 passes per
pair with flips, 1 without; an uncached epoch takes one per view (2) and reads and jitters the
896 px region. Counting teacher passes alone, a flip cache breaks even at the second epoch;
every epoch after that is student-only (benchmarks/bench_distill.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader

from .._atomic import OutputKind, atomic_path, read_small_json
from .._progress import progress_bar
from ..formats import zarr as zarr_store
from ..provenance import model_identity
from .augment import FLIP_VARIANTS, View
from .pairs import PairDataset, PairIndex
from .teacher import embed_crops

__all__ = ["CACHE_FORMAT", "CacheMismatchError", "TeacherCache", "build_teacher_cache"]

CACHE_FORMAT = "napari-xmag-teacher-cache"
CACHE_VERSION = 1
# Pairs per zarr shard (one file): many small chunks, few files.
_SHARD = 256


def _is_cache(path: Path) -> bool:
    attrs = (read_small_json(path / "zarr.json") or {}).get("attributes") if path.is_dir() else None
    return isinstance(attrs, dict) and attrs.get("format") == CACHE_FORMAT


#: What ``build_teacher_cache`` writes (it never replaces a cache: delete one to rebuild it).
CACHE_KIND = OutputKind("teacher cache", _is_cache)


class CacheMismatchError(ValueError):
    """A teacher cache made for other pairs or another teacher."""


class TeacherCache:
    """Read access to a cache; arrays are opened lazily in each process (DataLoader worker).

    ``in_memory`` reads the whole cache into RAM now: a per-pair zarr read costs about a
    millisecond, which a small CPU run notices. Forked DataLoader workers share the loaded
    arrays (copy-on-write), so this costs the cache's size once.
    """

    def __init__(self, path: str | Path, *, in_memory: bool = False) -> None:

        self.path = Path(path)
        group = zarr_store.open_group(self.path, CacheMismatchError, "teacher cache")
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(f"{self.path}: not a napari-xmag teacher cache")
        self.variants = len(self.attrs["variants"])
        self.in_memory = in_memory
        self._arrays: tuple[Any, Any] | None = None
        self.images = "student" in group
        if in_memory:
            self._arrays = (group["student"][...] if self.images else None, group["teacher"][...])

    def __len__(self) -> int:
        return int(self.attrs["pairs"])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if not self.in_memory:  # zarr handles are reopened in the receiving process
            state["_arrays"] = None
        return state

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:

            group = zarr.open_group(str(self.path), mode="r")
            self._arrays = (group["student"] if self.images else None, group["teacher"])
        return self._arrays

    def student(self, row: int) -> np.ndarray:
        images = self._open()[0]
        if images is None:
            raise CacheMismatchError(f"{self.path}: built without the 5x images (images=False)")
        return np.asarray(images[row])

    def rows(self, rows: np.ndarray, variant: int = 0) -> np.ndarray:
        """(len(rows), n*n, D) float32 targets of one variant, read in one go (rows sorted)."""
        array = self._open()[1]
        if isinstance(array, np.ndarray):
            return np.asarray(array[np.asarray(rows), variant], np.float32)
        selection = array.get_orthogonal_selection((np.asarray(rows), variant, slice(None), slice(None)))
        return np.asarray(selection, np.float32)

    def targets(self, row: int, variants: Sequence[int] | None = None) -> np.ndarray:
        """(len(variants), n*n, D) float32 targets of pair ``row`` (all variants by default)."""
        stored = np.asarray(self._open()[1][row], dtype=np.float32)
        return stored if variants is None else stored[list(variants)]

    def all_targets(self, rows: np.ndarray, variant: int = 0) -> np.ndarray:
        """(len(rows), n*n, D) float32 targets of one variant, for evaluation."""
        array = self._open()[1]
        return np.stack([np.asarray(array[int(r), variant], dtype=np.float32) for r in rows])

    def check(self, index: PairIndex, teacher: dict[str, Any], *, flips: bool) -> None:
        """Raise :class:`CacheMismatchError` unless the cache serves ``index`` and ``teacher``."""
        problems = []
        if self.attrs.get("index_fingerprint") != index.fingerprint():
            problems.append(
                f"it was built for other pairs ({self.attrs.get('pairs')} pairs; slides, stride,"
                f" sizes or 5x source differ; this run has {len(index)} pairs)"
            )
        cached = self.attrs.get("teacher", {})
        # The weights' hash identifies them; where the file lies (weights_source) may change.
        differ = {
            k: (cached.get(k), v) for k, v in teacher.items()
            if k != "weights_source" and cached.get(k) != v
        }
        if differ:
            what = ", ".join(f"{k}: {a!r} (cache) vs {b!r}" for k, (a, b) in differ.items())
            problems.append(f"it was built with another teacher ({what})")
        if flips and self.variants < len(FLIP_VARIANTS):
            problems.append("it holds no flip variants (built with flips=False) but this run flips")
        if problems:
            raise CacheMismatchError(
                f"{self.path}: cannot serve this run: {'; '.join(problems)}. Use another cache path"
                " or delete this one to rebuild it."
            )


def build_teacher_cache(
    path: str | Path,
    index: PairIndex,
    teacher: Any,
    *,
    flips: bool = True,
    images: bool = True,
    batch_size: int = 8,
    num_workers: int = 0,
    teacher_chunk: int = 256,
    amp_dtype: torch.dtype | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> TeacherCache:
    """Run the teacher once over every pair (each flip variant) and write the cache at ``path``.

    ``index`` is a whole :class:`PairIndex` (as built); datasets over its subsets address the
    cache by their ``rows``.

    Written into a temporary sibling folder and renamed into place, so ``path`` is either
    absent or complete. An existing ``path`` is an error: delete it to rebuild. ``images=False``
    stores the teacher targets only.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; delete it to rebuild the teacher cache")
    if not np.array_equal(index.rows, np.arange(len(index))):
        # rows address the cache; a subset's rows number the pairs of the index it came from
        raise ValueError("build the teacher cache over a whole PairIndex, not a subset of one")
    variants = [View(hflip=h, vflip=v) for v, h in ((0, 0), (0, 1), (1, 0), (1, 1))] if flips else [View()]
    dataset = PairDataset(index, views=len(variants), flips=False, jitter=False, fixed_views=variants)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    n, crops = len(index), index.crops_per_pair
    size = index.settings.patch_size
    dim = int(teacher.embed_dim)

    description = f"teacher cache ({len(variants)} variant{'s' * (len(variants) > 1)})"
    bar = progress_bar(progress, n, description, unit="pair")
    try:
        with atomic_path(path, CACHE_KIND) as tmp:  # also removes what a killed build left
            group = zarr.open_group(str(tmp), mode="w")
            shard = min(_SHARD, max(1, n))
            student_array = group.create_array(
                "student", shape=(n, size, size, 3), dtype="uint8",
                chunks=(1, size, size, 3), shards=(shard, size, size, 3),
            ) if images else None
            teacher_array = group.create_array(
                "teacher", shape=(n, len(variants), crops, dim), dtype="float16",
                chunks=(1, len(variants), crops, dim), shards=(shard, len(variants), crops, dim),
            )
            pending_s = np.zeros((0, size, size, 3), np.uint8)
            pending_t = np.zeros((0, len(variants), crops, dim), np.float16)
            written = 0
            for batch in loader:
                crops_uint8 = batch["teacher"].to(teacher.device)  # (B, V, n*n, C, C, 3)
                cls = embed_crops(teacher, crops_uint8, chunk=teacher_chunk, amp_dtype=amp_dtype)
                pending_t = np.concatenate([pending_t, cls.cpu().numpy().astype(np.float16)])
                pending_s = np.concatenate([pending_s, batch["student"][:, 0].numpy()])  # view 0: identity
                # Write whole shards only: a partial shard is rewritten on every write into it.
                ready = len(pending_s) if written + len(pending_s) == n else len(pending_s) // shard * shard
                if ready:
                    if student_array is not None:
                        student_array[written : written + ready] = pending_s[:ready]
                    teacher_array[written : written + ready] = pending_t[:ready]
                    pending_s, pending_t = pending_s[ready:], pending_t[ready:]
                    written += ready
                bar(written + len(pending_s))
            group.attrs.update({
                "format": CACHE_FORMAT,
                "format_version": CACHE_VERSION,
                "pairs": n,
                "index_fingerprint": index.fingerprint(),
                "teacher": model_identity(teacher),
                "variants": [FLIP_VARIANTS[v.variant] for v in variants],
                "student_size": size,
                "crop_size": index.settings.crop_size,
                "five_x_source": index.settings.five_x_source,
                "dtype": "float16",
                "jitter": "none: cached targets are un-jittered; jittered views run the teacher live",
            })
    finally:
        bar(None)
        dataset.close()
    return TeacherCache(path)
