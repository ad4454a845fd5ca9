"""Helpers for the tests that drive napari: open a slide as the reader does, wait for a widget's
background task, find the layers a widget owns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TIMEOUT_MS = 120_000


def open_slide(viewer: Any, path: str | Path, mpp: float | None = None) -> Any:
    """The slide layer napari-xmag's reader makes (with an mpp override, as the widgets give it)."""
    from napari.layers import Layer

    from napari_xmag._reader import slide_layer_data

    return viewer.add_layer(Layer.create(*slide_layer_data(str(path), mpp)))


def wait_for(qtbot: Any, task: Any, timeout_ms: int = TIMEOUT_MS) -> None:
    """Until a widget's background task has ended and its handlers have run (a fast worker may
    end before a ``waitSignal`` could connect, so wait on the task's state)."""
    assert task.running, "the task did not start (see the widget's status)"
    qtbot.waitUntil(lambda: not task.running, timeout=timeout_ms)


def owned(viewer: Any, key: str, role: str | None = None) -> list[Any]:
    """The layers whose ``metadata[key]`` names ``role`` (a string, or ``{"role": ...}``)."""
    found = []
    for layer in viewer.layers:
        value = layer.metadata.get(key)
        name = value.get("role") if isinstance(value, dict) else value
        if value is not None and (role is None or name == role):
            found.append(layer)
    return found


def canvas_text(viewer: Any) -> dict[str, list[str]]:
    """Text drawn in the canvas by layers (napari's text on Points and Shapes), by layer name.
    Our widgets put captions in the dock and the text overlay, so this should stay empty."""
    import numpy as np

    out = {}
    for layer in viewer.layers:
        text = getattr(layer, "text", None)
        if text is None or not text.visible:
            continue
        shown = [str(v) for v in np.atleast_1d(np.asarray(text.values, dtype=object)) if str(v)]
        if shown:
            out[layer.name] = shown
    return out


class Notifications:
    """The messages napari notified while the ``with`` block ran (warnings, errors, info)."""

    def __enter__(self) -> list[str]:
        from napari.utils.notifications import notification_manager

        self.messages: list[str] = []
        self._manager = notification_manager
        notification_manager.notification_ready.connect(self._record)
        return self.messages

    def _record(self, event: Any) -> None:
        self.messages.append(str(getattr(event, "message", event)))

    def __exit__(self, *exc: Any) -> None:
        self._manager.notification_ready.disconnect(self._record)
