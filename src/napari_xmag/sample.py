"""Where the sample slide lives: generated once into the user cache, then reused."""

from __future__ import annotations

import os
from pathlib import Path

from .synthetic import write_sample_slide

SAMPLE_NAME = "xmag-sample-v1.svs"  # bump the version when the generator's output changes


def cache_dir() -> Path:
    """``XMAG_CACHE_DIR`` if set, else the platform's user cache folder for napari-xmag."""
    env = os.environ.get("XMAG_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-xmag"))


def sample_slide_path(folder: str | os.PathLike[str] | None = None) -> Path:
    """The sample slide's path, written on first use (atomically) with a fixed seed."""
    folder = Path(folder) if folder is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SAMPLE_NAME
    if not path.exists():
        write_sample_slide(path, seed=0)
    return path
