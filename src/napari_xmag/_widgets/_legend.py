"""Legends in the dock: a colour bar with its range and units for every heatmap, a class key
(colour and name) for every label map, a swatch for outlines. In the dock, not on the canvas,
so they stay legible at any zoom; built from the layers themselves, so they show what is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label
from napari.layers import Image, Labels, Shapes
from qtpy.QtGui import QImage, QPixmap

from napari_xmag._widgets._common import text_label

__all__ = ["Legend", "LegendEntry", "legend_entries"]

BAR_SIZE = (160, 12)  # colour bar, px
SWATCH = 12  # class key square, px
MAX_CLASSES = 24  # a key longer than this lists the first ones and says how many more


@dataclass
class LegendEntry:
    """What one layer's legend says: ``kind`` is "colorbar", "classes", "rgb" or "outline"."""

    title: str
    kind: str
    classes: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)
    colors: np.ndarray | None = None  # (N, 4) float RGBA along the colour bar
    limits: tuple[float, float] | None = None
    units: str = ""
    note: str = ""


def _rgb(color: Any) -> tuple[int, int, int]:
    c = np.asarray(color, np.float64).ravel()[:3]
    return tuple(round(float(v) * 255) for v in np.clip(c, 0, 1))  # type: ignore[return-value]


def _units(meta: dict[str, Any]) -> str:
    kind = meta.get("kind", "")
    return {"cosine": "cosine similarity (-1 to 1)", "probe": "probability", "attention": "attention"}.get(
        kind, str(meta.get("values") or ""))


def legend_entries(layer: Any) -> list[LegendEntry]:
    """The legend of one napari layer (nothing for the slide itself)."""
    meta = layer.metadata.get("xmag_map") or {}
    if isinstance(layer, Labels):
        classes = list(meta.get("classes") or [])
        if not classes and "class" in getattr(layer, "features", {}):
            classes = [str(c) for c in list(layer.features["class"])[1:]]  # row 0: background
        if classes:
            ids = list(range(1, len(classes) + 1))
        else:  # painted annotations: the ids used so far
            ids = [int(v) for v in np.unique(np.asarray(layer.data)) if v > 0]
            classes = [f"class {i}" for i in ids]
        key = [(name, _rgb(layer.colormap.map(i))) for name, i in zip(classes, ids, strict=True)]
        return [LegendEntry(layer.name, "classes", classes=key)]
    if isinstance(layer, Image) and layer.rgb:
        note = ("red, green, blue = principal components 1, 2, 3 of the patch features, each scaled"
                " between its 1st and 99th percentile") if meta.get("kind") == "pca" else ""
        return [LegendEntry(layer.name, "rgb", note=note)] if note else []
    if isinstance(layer, Image) and meta:
        lo, hi = (float(v) for v in layer.contrast_limits)
        colors = np.asarray(layer.colormap.map(np.linspace(0.0, 1.0, BAR_SIZE[0])))
        return [LegendEntry(layer.name, "colorbar", colors=colors, limits=(lo, hi), units=_units(meta))]
    if isinstance(layer, Shapes) and len(layer.data):
        seen: dict[str, tuple[int, int, int]] = {}
        n = len(layer.data)
        labels = list(layer.features["label"]) if "label" in layer.features else [layer.name] * n
        for label, colour in zip(labels, layer.edge_color, strict=False):
            if str(label).strip():  # unlabelled shapes (the 15 other teacher crops) share the first's key
                seen.setdefault(str(label), _rgb(colour))
        return [LegendEntry(layer.name, "outline", classes=list(seen.items()))]
    return []


class Legend(Container):
    """The legends of some layers, one block each, in the order given."""

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.entries: list[LegendEntry] = []
        self.native.setMaximumWidth(380)

    def show_layers(self, layers: list[Any]) -> None:
        self.show([entry for layer in layers for entry in legend_entries(layer)])

    def show(self, entries: list[LegendEntry]) -> None:
        self.clear()
        self.entries = list(entries)
        for entry in self.entries:
            self.extend(self._block(entry))

    def _block(self, entry: LegendEntry) -> list[Any]:
        title = text_label(f"<b>{entry.title}</b>")
        widgets: list[Any] = [title]
        if entry.kind == "colorbar" and entry.colors is not None and entry.limits is not None:
            bar = Label(value="")
            bar.native.setPixmap(_bar_pixmap(entry.colors))
            lo, hi = entry.limits
            widgets += [bar, text_label(f"{_number(lo)} … {_number(hi)}  {entry.units}".rstrip())]
        elif entry.kind in ("classes", "outline"):
            shown = entry.classes[:MAX_CLASSES]
            rows = [f'<span style="background-color: rgb{rgb}">&nbsp;&nbsp;&nbsp;&nbsp;</span>&nbsp;{name}'
                    for name, rgb in shown]
            if len(entry.classes) > len(shown):
                rows.append(f"… and {len(entry.classes) - len(shown)} more")
            key = text_label("<br>".join(rows))
            widgets.append(key)
        if entry.note:
            note = text_label(entry.note)
            widgets.append(note)
        return widgets


def _bar_pixmap(colors: np.ndarray) -> QPixmap:
    width, height = BAR_SIZE
    rgba = (np.clip(colors[:, :4], 0, 1) * 255).astype(np.uint8)
    image = np.ascontiguousarray(np.repeat(rgba[None, :width], height, axis=0))
    qimage = QImage(image.data, width, height, 4 * width, QImage.Format_RGBA8888)
    return QPixmap.fromImage(qimage.copy())


def _number(value: float) -> str:
    """For people: 3 significant digits, no trailing zeros."""
    return f"{value:.3g}"
