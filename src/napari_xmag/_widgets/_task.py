"""The one way a dock widget runs work: in a napari ``thread_worker``, never on the UI thread.

Every action that can take more than ~100 ms (reading a field of view, training a probe,
embedding a slide, comparing two models) goes through :class:`BackgroundTask`: its controls are
disabled while it runs and re-enabled when it ends, however it ends; a napari progress bar
counts what the work reports; *Cancel* sets the event the work polls; a failure is one line in
the widget's status and a napari notification, never a traceback dialog.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

__all__ = ["BackgroundTask", "Cancelled", "notify", "one_line"]


class Cancelled(Exception):
    """Raised by work that saw its cancel event set (the library's own, e.g. EmbedCancelled,
    are recognised by :attr:`BackgroundTask.cancelled_types`)."""


def one_line(err: BaseException) -> str:
    """An exception as the user reads it: our errors are sentences naming the file and cause."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    ours = type(err).__module__.startswith("napari_xmag")
    return text if ours and text else f"{type(err).__name__}: {text}" if text else type(err).__name__


def notify(message: str, level: str = "warning") -> None:
    """A napari notification (and so the log), for what the user should not miss."""
    {"info": show_info, "warning": show_warning, "error": show_error}[level](message)


@functools.cache
def _signals_class() -> type:
    class Signals(QObject):
        advanced = Signal(int, int)  # (done, total), emitted from the worker thread

    return Signals


class BackgroundTask:
    """Runs ``work(*args, progress=..., cancel=...)`` in a worker thread for one widget.

    With ``on_yield``, ``work`` is a generator: each value it yields reaches ``on_yield`` on the
    UI thread (napari's ``yielded`` signal), and what it returns reaches ``on_done``.

    ``controls`` are disabled while it runs; ``cancel_button`` (if any) is enabled only then;
    ``status`` (a magicgui Label) shows what happens. ``cancelled_types``: exceptions that mean
    "the user cancelled" rather than a failure.
    """

    def __init__(
        self, title: str, controls: Sequence[Any], status: Any, cancel_button: Any = None,
        cancelled_types: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.title = title
        self._controls = list(controls)
        self._status = status
        self._cancel_button = cancel_button
        self._cancelled_types = (Cancelled, *cancelled_types)
        self._worker: Any = None
        self._bar: Any = None
        self._cancel = threading.Event()
        self._signals = _signals_class()()
        self._signals.advanced.connect(self._on_progress)
        if cancel_button is not None:
            cancel_button.enabled = False
            cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def worker(self) -> Any:
        """The running napari worker (tests wait on its ``finished`` signal), or None."""
        return self._worker

    def start(
        self, work: Callable[..., Any], *args: Any, message: str,
        on_done: Callable[[Any], None], on_failed: Callable[[BaseException], None] | None = None,
        progress_total: int | None = None, on_yield: Callable[[Any], None] | None = None,
    ) -> bool:
        """Start ``work`` unless a run is going on; False (and a status line) when one is."""
        if self._worker is not None:
            self._status.value = f"{self.title} is running: wait, or press Cancel."
            return False
        self._cancel = threading.Event()
        cancel, emit = self._cancel, self._signals.advanced.emit

        def run() -> Any:
            return work(*args, progress=emit, cancel=cancel)

        def run_yielding() -> Any:  # a generator function: napari makes a GeneratorWorker of it
            return (yield from work(*args, progress=emit, cancel=cancel))

        connect = {"returned": on_done, "errored": lambda err: self._on_error(err, on_failed),
                   "finished": self._on_finished}
        if on_yield is not None:
            connect["yielded"] = on_yield
        self._worker = create_worker(run if on_yield is None else run_yielding, _start_thread=False,
                                     _connect=connect)
        for control in self._controls:
            control.enabled = False
        if self._cancel_button is not None:
            self._cancel_button.enabled = True
        self._bar = progress(total=progress_total or 0, desc=self.title)
        self._status.value = message
        self._worker.start()
        return True

    def cancel(self, _event: Any = None) -> None:
        if self._worker is not None:
            self._cancel.set()
            self._status.value = "Cancelling after the current step."

    # ---- on the UI thread ------------------------------------------------------------------
    def _on_progress(self, done: int, total: int) -> None:
        if self._bar is not None:
            if total and self._bar.total != total:
                self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def _on_error(self, err: BaseException, on_failed: Callable[[BaseException], None] | None) -> None:
        if isinstance(err, self._cancelled_types):
            kept = getattr(err, "kept", None)  # e.g. a partial embedding a rerun resumes from
            self._status.value = f"Cancelled: {one_line(err)}; {kept or 'nothing was written'}."
            return
        kept = getattr(err, "kept", None)  # what a failed run kept for the next one to resume from
        message = one_line(err) + (f" ({kept})" if kept else "")
        self._status.value = message
        notify(f"{self.title}: {message}", "error")
        if on_failed is not None:
            on_failed(err)

    def _on_finished(self) -> None:
        self._worker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for control in self._controls:
            control.enabled = True
        if self._cancel_button is not None:
            self._cancel_button.enabled = False
