"""The one safe-write path: build an output under a temporary sibling, then rename it into
place, and replace only what napari-xmag can prove it wrote.

Every writer of the package goes through :func:`atomic_path`, which enforces three rules:

* **Lose nothing.** A target that exists is replaced only when it is napari-xmag's own output
  of the same kind (each writer passes an :class:`OutputKind` that recognises its files by a
  marker inside them: a ``format`` attribute, our map metadata, a model config). Anything else
  there (a user's folder, a slide, a file of another kind, a link) is refused with
  :class:`OutputExistsError` naming it, unless the caller passes ``overwrite=True`` (the CLI's
  ``--overwrite``, napari's confirmation).
* **Never half-written.** The output is built inside a temporary folder
  ``.{name}.{8 random characters}.part`` beside the target, then renamed into place; a folder
  target replaced is first moved into that temporary folder, so the target is the complete
  old copy until the rename and the complete new one after.
* **A temporary is ours only if it says so.** The temporary folder holds an ``owner`` record
  (JSON: our format, the target's name, pid, host) that is created under a scratch name,
  locked, and only then renamed to ``owner``: the record never exists unlocked while its writer
  lives. :func:`remove_stale_parts` removes a temporary only when its owner record is ours, names
  that target, and its lock can be taken (the operating system drops the lock when the writer
  dies, however it dies). Nothing is removed by its name alone: a user's
  ``.slide.h5.backup01.part/`` has no owner record and is never touched.

Outputs are created with the user's umask (a colleague on shared storage reads an exported
model), not with the private modes temporary files get.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._memory import format_size
from ._values import json_safe

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be removed, and that is the lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ANY_FILE",
    "OWNER",
    "OutputError",
    "OutputExistsError",
    "OutputKind",
    "atomic_path",
    "check_output_folder",
    "check_target",
    "describe",
    "existing_ancestor",
    "json_kind",
    "remove_stale_parts",
    "write_json",
]

OWNER = "owner"
OWNER_FORMAT = "napari-xmag-part"
_PART_NAME = re.compile(r"[a-z0-9_]{8}")


class OutputError(OSError):
    """The output cannot be written (not writable, read-only, no space left, something else is
    there); says where and why.

    ``OutputError(errno.ENOSPC, message)``: ``errno`` is kept, ``str()`` is the message alone.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class OutputExistsError(OutputError, FileExistsError):
    """The target holds something napari-xmag did not write (or not of this kind)."""


@dataclass(frozen=True)
class OutputKind:
    """What a writer writes, and how to recognise one it wrote before.

    ``is_ours(path)`` looks inside an existing ``path`` for the marker the writer puts there;
    it never raises and never follows a link out of ``path``.
    """

    name: str
    is_ours: Callable[[Path], bool]


def _nothing(_: Path) -> bool:
    return False


#: For outputs with no marker of their own: anything already at the target is refused.
ANY_FILE = OutputKind("file", _nothing)


def json_kind(name: str, *formats: str) -> OutputKind:
    """The kind of a JSON file whose top-level ``"format"`` is one of ``formats``."""

    def is_ours(path: Path) -> bool:
        data = read_small_json(path)
        return isinstance(data, dict) and data.get("format") in formats

    return OutputKind(name, is_ours)


def read_small_json(path: Path, limit: int = 256 << 20) -> Any:
    """A JSON regular file's content, or None (missing, not a file, too big, not JSON)."""
    try:
        st = Path(path).stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- the target ---------------------------------------------------------------------------------
def describe(path: Path) -> str:
    """A few words on what is at ``path``: "a folder holding 2 files and 1 folder"."""
    try:
        if path.is_symlink():
            return f"a link to {path.readlink()}"
        if path.is_dir():
            files = folders = 0
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders += 1
                    else:
                        files += 1
            if not files and not folders:
                return "an empty folder"
            counted = ((files, "file"), (folders, "folder"))
            parts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in counted if n]
            return "a folder holding " + " and ".join(parts)
        st = path.stat()
        if stat.S_ISREG(st.st_mode):
            return f"a file of {format_size(st.st_size)}"
        return "a special file (pipe, socket or device)"
    except OSError as err:
        return f"something that cannot be read ({err.strerror or err})"


def check_target(path: str | os.PathLike[str], kind: OutputKind, overwrite: bool = False) -> bool:
    """Whether ``path`` exists; :class:`OutputExistsError` when it holds something that is not
    ``kind``'s output and ``overwrite`` is false. Writes nothing: call it before slow work."""
    path = Path(path)
    if not os.path.lexists(path):
        return False
    if overwrite or (not path.is_symlink() and kind.is_ours(path)):
        return True
    raise OutputExistsError(
        errno.EEXIST,
        f"{path}: exists and is not a napari-xmag {kind.name} ({describe(path)}); nothing was changed."
        " Choose another output, or pass --overwrite to replace it",
    )


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], kind: OutputKind, *, overwrite: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it goes.

    The caller creates the file or folder at the yielded path (its parent exists). What is at
    ``path`` is checked first (:func:`check_target`) and again just before the rename, so a
    foreign file that appeared meanwhile is not replaced either. Stale temporaries of ``path``
    left by killed writers go first.
    """
    path = Path(path)
    check_target(path, kind, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        owner = _hold(tmp_dir, path.name)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        target = tmp_dir / path.name
        yield target
        _with_umask(target)
        check_target(path, kind, overwrite)
        if os.path.lexists(path) and (target.is_dir() or (path.is_dir() and not path.is_symlink())):
            path.replace(tmp_dir / f"{path.name}.replaced")  # a folder: goes with tmp_dir below
        target.replace(path)
    finally:
        owner.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(
    path: str | os.PathLike[str], data: Any, kind: OutputKind = ANY_FILE, *, overwrite: bool = False,
    indent: int | None = 2,
) -> Path:
    """Write ``json_safe(data)`` atomically (flushed to disk before the rename): a reader, or a
    run killed meanwhile, sees the old file or the new one. ``indent=None`` for large files."""
    path = Path(path)
    with atomic_path(path, kind, overwrite=overwrite) as tmp, tmp.open("w", encoding="utf-8") as f:
        json.dump(json_safe(data), f, indent=indent, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


# ---- temporaries ----------------------------------------------------------------------------
def _hold(tmp_dir: Path, target_name: str) -> IO[str]:
    """Write the owner record, lock it, then give it its name: it is never seen unlocked."""
    scratch = tmp_dir / f".{OWNER}.new"
    handle = scratch.open("w", encoding="utf-8")
    try:
        if fcntl is not None:
            # A file system without locks: nobody can take it either, so the folder is never
            # judged stale (left behind, rather than removed under a live writer).
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: ours alone
        json.dump({"format": OWNER_FORMAT, "target": target_name, "pid": os.getpid(),
                   "host": socket.gethostname()}, handle)
        handle.flush()
        scratch.replace(tmp_dir / OWNER)
    except BaseException:
        handle.close()
        raise
    return handle


def remove_stale_parts(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``path`` whose writer is gone; return what was removed.

    A candidate is a real folder (not a link) named ``.{name}.XXXXXXXX.part`` whose ``owner``
    record is ours and names ``path``; it is removed only when no live writer holds the lock.
    """
    path = Path(path)
    prefix = f".{path.name}."
    try:
        with os.scandir(path.parent) as entries:  # one pass, cheap per entry: folders hold many files
            names = [
                e.name for e in entries
                if e.name.startswith(prefix) and e.name.endswith(".part")
                and _PART_NAME.fullmatch(e.name[len(prefix) : -len(".part")])
                and e.is_dir(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        part = path.parent / name
        if _abandoned(part, path.name):
            shutil.rmtree(part, ignore_errors=True)
            removed.append(part)
    return removed


def _abandoned(part: Path, target_name: str) -> bool:
    """Whether ``part`` is a temporary of ours for ``target_name`` whose writer is gone."""
    owner = part / OWNER
    try:
        fd = os.open(owner, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False  # no owner record (not ours, or being set up), a link, or not ours to open
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            record = json.loads(handle.read(4096))
        except (OSError, ValueError):
            return False
        if not (isinstance(record, dict) and record.get("format") == OWNER_FORMAT
                and record.get("target") == target_name):
            return False
        if fcntl is None:
            handle.close()
            try:
                owner.unlink()  # fails while the writer holds it open
            except OSError:
                return False
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True  # the lock goes with the handle; the folder goes next


# ---- permissions -------------------------------------------------------------------------------
def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing other threads)."""
    with contextlib.suppress(OSError, ValueError), Path("/proc/self/status").open(encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _with_umask(target: Path) -> None:
    """Give ``target`` (and what a folder holds) the modes a plain ``open`` would: temporary
    files and some libraries (safetensors) create them private (0600)."""
    if not os.path.lexists(target) or target.is_symlink():
        return
    mask = _umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    with contextlib.suppress(OSError):
        entries = [target, *target.rglob("*")] if target.is_dir() else [target]
        for entry in entries:  # rglob does not follow links to folders
            if entry.is_symlink():
                continue
            executable = entry.stat().st_mode & 0o111 & ~mask
            entry.chmod(dir_mode if entry.is_dir() else file_mode | executable)


# ---- the output folder ---------------------------------------------------------------------------
def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_folder(out_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputError` unless files can be written into ``out_dir`` (or it can be
    created: its nearest existing ancestor is a writable folder). Writes nothing."""
    out = Path(out_dir)
    base = existing_ancestor(out.absolute())
    if not base.is_dir():
        raise OutputError(errno.ENOTDIR, f"{out}: cannot write there: {base} is a file, not a folder")
    if os.access(base, os.W_OK | os.X_OK):
        return
    where = "the output folder" if base == out.absolute() else f"its parent {base}"
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    code, cause = (errno.EROFS, "is on a read-only file system") if read_only else (
        errno.EACCES, "is not writable (permission denied)")
    raise OutputError(code, f"{out}: cannot write the output: {where} {cause}")


def output_error(output: Path, err: BaseException, what: str = "the output") -> OutputError | None:
    """A clear :class:`OutputError` for a failed write (no space, permission, read-only), or
    None for an error that is not about the output's file system."""
    if isinstance(err, OutputError):
        return err
    code = getattr(err, "errno", None)
    if code is None:  # h5py: "... errno = 28, error message = 'No space left on device' ..."
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code is None:
        if not isinstance(err, OSError):
            return None
        return OutputError(errno.EIO, f"{output}: cannot write {what}: {err}")
    causes = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
    }
    cause = causes.get(code) or os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            cause += f" ({format_size(shutil.disk_usage(existing_ancestor(output.parent)).free)} free)"
    return OutputError(code, f"{output}: cannot write {what}: {cause}; nothing was written")

