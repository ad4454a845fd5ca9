"""HDF5 files a user passes, read safely: every reader of an ``.h5`` goes through here.

An HDF5 file can do more than hold arrays. A dataset may keep its bytes in *another* file
(external storage) or be assembled from other files (a virtual dataset), so a features file
could make us read, show and re-save any file of the machine; and a few kilobytes can declare
a dataset of terabytes (unwritten chunks read as the fill value). So, before any dataset is
read:

* external and virtual datasets are refused;
* a dataset's declared size must be held by the file: uncompressed, its stored bytes must cover
  it; compressed, by at most :data:`MAX_COMPRESSION`;
* what reading it allocates must fit the memory budget (:func:`napari_xmag._memory.memory_budget`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._atomic import OutputKind
from .._memory import format_size, too_big
from .._paths import file_problem

__all__ = ["MAX_COMPRESSION", "dataset", "dataset_problem", "open_h5", "read"]

#: No real array of ours compresses more than this (float features and tokens: barely at all);
#: a dataset that claims to is a bomb.
MAX_COMPRESSION = 100.0
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@contextmanager
def open_h5(path: str | os.PathLike[str], error: type[Exception], what: str = "file") -> Iterator[Any]:
    """``h5py.File(path, "r")`` for a regular file that is HDF5; ``error`` naming it otherwise."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise error(f"{path}: {problem}" if problem != "no such file" else f"{path}: no such {what}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise error(f"{path}: not a readable {what} (not HDF5, or damaged: {_first_line(err)})") from None
    with handle:
        yield handle


def dataset_problem(dset: Any, factor: float = 1.0) -> str | None:
    """Why ``dset`` must not be read, or None; ``factor``: bytes allocated per stored byte."""
    if dset.is_virtual:
        return "is a virtual dataset (assembled from other files), which napari-xmag does not follow"
    if dset.external:
        names = ", ".join(str(e[0]) for e in dset.external[:2])
        return f"keeps its data in another file ({names}), which napari-xmag does not follow"
    nbytes = int(dset.size) * int(dset.dtype.itemsize)
    if nbytes:
        stored = int(dset.id.get_storage_size())
        filters = dset.id.get_create_plist().get_nfilters()
        limit = nbytes / MAX_COMPRESSION if filters else nbytes
        if stored < limit:
            return (f"declares {tuple(dset.shape)} {dset.dtype} ({format_size(nbytes)}) but the file holds"
                    f" only {format_size(stored)} of it (unwritten or damaged)")
    budget = too_big(nbytes * factor)
    if budget:
        return f"declares {tuple(dset.shape)} {dset.dtype} ({format_size(nbytes)}): {budget}"
    return None


def dataset(group: Any, key: str, path: Path, error: type[Exception], factor: float = 1.0) -> Any:
    """``group[key]`` as a dataset that is safe to read; ``error`` naming the file otherwise."""
    if key not in group:
        raise error(f"{path}: no '{key}' dataset")
    dset = group.get(key, getlink=False)
    if not isinstance(dset, h5py.Dataset):
        raise error(f"{path}: '{key}' is a {type(dset).__name__}, not a dataset")
    problem = dataset_problem(dset, factor)
    if problem:
        raise error(f"{path}: '{key}' {problem}")
    return dset


def read(group: Any, key: str, path: Path, error: type[Exception], factor: float = 1.0) -> np.ndarray:
    """The whole dataset ``group[key]`` as an array, after :func:`dataset`'s checks."""
    return np.asarray(dataset(group, key, path, error, factor)[()])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__



def format_kind(name: str, fmt: str) -> Any:
    """The :class:`~napari_xmag._atomic.OutputKind` of an ``.h5`` whose root ``format``
    attribute is ``fmt``."""

    def is_ours(path: Path) -> bool:
        try:
            if file_problem(path) is not None:
                return False

            with h5py.File(path, "r") as f:
                value = f.attrs.get("format")
            return (value.decode() if isinstance(value, bytes) else value) == fmt
        except Exception:  # any file at all: not ours
            return False

    return OutputKind(name, is_ours)
