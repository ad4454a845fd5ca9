"""Handing freed heap memory back to the operating system (glibc)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from typing import Any

import psutil

MB = 1 << 20
GB = 1 << 30
_BUDGET_ENV = "XMAG_MEMORY_BUDGET_MB"


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL("libc.so.6")


def return_freed_memory() -> None:
    """``malloc_trim(0)``: release the free pages of every malloc arena.

    glibc keeps freed memory for reuse, and with several threads allocating batch-sized buffers
    (reader threads, torch) its arenas fragment: a 40k slide's embedding grew from 1.2 to 2.6 GB
    of RSS without this, and stays at 1.2 GB with it. Not glibc (macOS, Windows, musl): nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


def rss_mb() -> float:
    """This process's resident memory, in MB."""
    return psutil.Process().memory_info().rss / MB


class RssSampler:
    """Resident memory before, at its peak (sampled every ``interval`` s) and after a block, in MB.

    >>> with RssSampler() as rss:  # doctest: +SKIP
    ...     embed_slide(...)
    >>> rss.before, rss.peak, rss.after  # doctest: +SKIP
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.before = self.peak = self.after = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xmag-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_mb()
        self.peak = max(self.peak, self.after)


def memory_budget() -> int:
    """Bytes one input may make us allocate: ``XMAG_MEMORY_BUDGET_MB``, else half the RAM.

    Sizes a file declares (an h5 dataset's shape, a slide's level) are checked against it before
    anything is allocated, so that a small file claiming a huge array is refused, not obeyed.
    """
    env = os.environ.get(_BUDGET_ENV)
    if env:
        with contextlib.suppress(ValueError):
            return max(1, int(float(env) * MB))
    try:

        return int(psutil.virtual_memory().total // 2)
    except (ImportError, OSError):  # pragma: no cover - psutil comes with distributed
        return 8 * GB


def too_big(nbytes: float) -> str | None:
    """Why an allocation of ``nbytes`` is refused, or None when it fits the budget."""
    budget = memory_budget()
    if nbytes <= budget:
        return None
    return (f"it would need {format_size(nbytes)} of memory, more than the budget of {format_size(budget)}"
            f" (half the RAM; set {_BUDGET_ENV} to change it)")


def format_size(n: float) -> str:
    """``2411724800 -> "2.2 GiB"``: a byte count for people."""
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"
