"""Atomic writes: build the file or folder under a temporary sibling name, then rename it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it goes.

    A folder (a zarr store) cannot be renamed over another, so an existing one is removed just
    before the rename: the old copy is complete until then, the new one is complete after.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        target = tmp_dir / path.name
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() and target.is_dir():
            path.unlink()
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
