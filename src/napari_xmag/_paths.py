"""Input paths: what a file a user names must be before anything opens it.

Opening a named pipe blocks until someone writes to it, and reading a device such as
``/dev/zero`` never ends: every reader asks :func:`file_problem` first, so that such a path is
refused at once, with the reason, instead of freezing the CLI or napari.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from platformdirs import user_cache_dir as platform_cache_dir

__all__ = ["MAX_LIST_BYTES", "InputFileError", "file_problem", "user_cache_dir"]

#: The largest text list or CSV read whole (a 100 000-slide list is about 10 MB).
MAX_LIST_BYTES = 256 << 20


class InputFileError(ValueError):
    """A file a user passed cannot be used (missing, damaged, refused); the message names the
    file and the cause. Each format has its own subclass."""


def user_cache_dir() -> Path:
    """``XMAG_CACHE_DIR`` if set, else the platform's user cache folder for napari-xmag."""
    env = os.environ.get("XMAG_CACHE_DIR")
    if env:
        return Path(env)

    return Path(platform_cache_dir("napari-xmag"))


def file_problem(
    path: str | os.PathLike[str], *, folder: bool = False, max_bytes: int | None = None
) -> str | None:
    """Why ``path`` cannot be read as an input, or None when it can.

    A regular file (links followed) passes; with ``folder=True`` a folder does too. Missing
    paths, pipes, sockets and devices are refused, as is a file over ``max_bytes``.
    """
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return None if folder else "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if max_bytes is not None and st.st_size > max_bytes:
        return f"is {st.st_size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB read for it"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    return file_problem(Path(path)) is None
