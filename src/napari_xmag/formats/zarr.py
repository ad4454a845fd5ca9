"""Zarr stores a user passes, read safely: every reader of a ``.zarr`` goes through here.

A zarr store is a folder, and each chunk a file in it: a chunk that is a *link* would make us
read any file of the machine as array data (and re-save it through a writer), so stores holding
links or special files are refused. What a store declares is checked before it is read: an
array's size must fit the memory budget, and a store of a few kilobytes may not declare an array
of gigabytes that only its fill value would fill (:func:`read` with ``min_written``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .._memory import format_size, too_big

__all__ = ["MAX_ENTRIES", "array", "open_group", "read", "store_problem"]

#: Files and folders a store may hold before it is refused unread.
MAX_ENTRIES = 1_000_000


def store_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the folder ``path`` must not be read as a zarr store (links, devices), or None."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_dir():
            return "is not a folder (a zarr store is one)"
        for seen, entry in enumerate(path.rglob("*"), start=1):  # rglob does not follow links
            if seen > MAX_ENTRIES:
                return f"holds more than {MAX_ENTRIES:,} files"
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                return f"holds a link ({entry.relative_to(path)}), which napari-xmag does not follow"
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return f"holds a special file ({entry.relative_to(path)})"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def open_group(path: str | os.PathLike[str], error: type[Exception], what: str = "zarr store") -> Any:
    """The root group of a store that passed :func:`store_problem`, read-only."""
    path = Path(path)
    problem = store_problem(path)
    if problem:
        raise error(f"{path}: {problem}")
    try:
        import zarr  # here: checking a features or map file's kind needs no zarr (0.4 s to import)

        return zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises many types for a foreign or damaged store
        raise error(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from None


def array(group: Any, key: str, path: Path, error: type[Exception], factor: float = 1.0,
          min_written: float = 0.0) -> Any:
    """``group[key]`` as an array that is safe to read whole; ``error`` naming the store otherwise.

    ``min_written``: the fraction of its chunks that must be on disk (a map may leave empty
    chunks unwritten; feature arrays never do).
    """
    if key not in group:
        raise error(f"{path}: no '{key}' array")
    arr = group[key]
    import zarr  # see open_group

    if not isinstance(arr, zarr.Array):
        raise error(f"{path}: '{key}' is a group, not an array")
    nbytes = int(np.prod(arr.shape, dtype=np.float64)) * int(arr.dtype.itemsize)
    if min_written and nbytes and arr.nchunks_initialized < min_written * arr.nchunks:
        raise error(
            f"{path}: '{key}' declares {tuple(arr.shape)} {arr.dtype} ({format_size(nbytes)}) but the store"
            f" holds only {arr.nchunks_initialized} of its {arr.nchunks} chunks (unwritten or damaged)"
        )
    budget = too_big(nbytes * factor)
    if budget:
        declared = f"{tuple(arr.shape)} {arr.dtype} ({format_size(nbytes)})"
        raise error(f"{path}: '{key}' declares {declared}: {budget}")
    return arr


def read(group: Any, key: str, path: Path, error: type[Exception], factor: float = 1.0,
         min_written: float = 0.0) -> np.ndarray:
    """The whole array ``group[key]``, after :func:`array`'s checks."""
    return np.asarray(array(group, key, path, error, factor, min_written)[...])
