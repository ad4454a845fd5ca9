"""Atomic writes: build the file or folder under a temporary sibling name, then rename it.

Every writer of the package goes through :func:`atomic_path`, so a temporary has one shape:
a folder ``.{name}.{8 random characters}.part`` beside the target ``name``, holding the file or
folder being built and an ``owner`` lock file. A writer killed mid-write (SIGKILL, out of memory,
a power cut) leaves at most that folder behind, never a partial file under the final name.

The next write of the same target removes such stale folders first (:func:`remove_stale_parts`).
A live writer holds an exclusive lock on its ``owner`` file, which the operating system drops
when the process dies, however it dies; a folder whose lock can be taken belongs to no one. So
a concurrent writer of the same target is never disturbed, and writers of other targets in the
same folder (a batch writing one file per slide from several workers) are not even looked at:
only ``.{name}.*.part`` of the exact target name is a candidate.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be removed, and that is the lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_path", "remove_stale_parts"]

OWNER = "owner"
# A folder without an owner file is either being set up this very moment or was left by an older
# version; it is stale once it is this old.
_UNOWNED_GRACE_S = 60.0


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it goes.

    The caller creates the file or folder at the yielded path (its parent exists). An existing
    folder (a zarr store) cannot be renamed over, so it is first moved into the temporary folder,
    then the new one is renamed into place: ``path`` is the complete old copy until then and the
    complete new one after. Stale temporaries of ``path`` left by killed writers go first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        owner = _hold(tmp_dir / OWNER)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        target = tmp_dir / path.name
        yield target
        if (path.is_dir() and not path.is_symlink()) or (target.is_dir() and os.path.lexists(path)):
            os.replace(path, tmp_dir / f"{path.name}.replaced")  # goes with tmp_dir below
        os.replace(target, path)
    finally:
        owner.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)


def remove_stale_parts(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``path`` that no live writer holds; return what was removed."""
    path = Path(path)
    prefix = f".{path.name}."
    pattern = re.compile(rf"{re.escape(prefix)}[a-z0-9_]{{8}}\.part")
    try:
        with os.scandir(path.parent) as entries:  # one pass, cheap per entry: folders hold many files
            names = [e.name for e in entries if e.name.startswith(prefix) and pattern.fullmatch(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    candidates = [path.parent / name for name in names]
    removed = []
    for part in candidates:
        if part.is_dir() and not part.is_symlink() and _abandoned(part):
            shutil.rmtree(part, ignore_errors=True)
            removed.append(part)
    return removed


def _hold(owner: Path) -> IO[str]:
    """Create ``owner`` and hold it (locked where locks exist) until the handle is closed."""
    handle = owner.open("w", encoding="utf-8")
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    if fcntl is not None:
        # A file system without locks: no one can take it either, so the folder is never judged
        # stale (left behind, rather than removed under a live writer).
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: nobody else has it
    return handle


def _abandoned(part: Path) -> bool:
    """Whether the writer of the temporary folder ``part`` is gone."""
    owner = part / OWNER
    try:
        handle = owner.open("r+", encoding="utf-8")
    except FileNotFoundError:
        try:
            return time.time() - part.stat().st_mtime > _UNOWNED_GRACE_S
        except FileNotFoundError:
            return False  # its writer finished and removed it meanwhile
    except OSError:
        return False
    with handle:
        if fcntl is None:
            handle.close()
            try:
                owner.unlink()  # fails while the writer holds it open
            except OSError:
                return False
            return True
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True  # the lock goes with the handle; the folder goes next
