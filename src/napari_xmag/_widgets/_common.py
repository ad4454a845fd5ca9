"""Small helpers the XMAG dock widgets share: finding slide layers, adding owned layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

def confirm_replace(path: Any, reason: str) -> bool:
    """Ask the user before something napari-xmag did not write is replaced; no window, no."""
    from qtpy.QtWidgets import QApplication, QMessageBox  # Qt only when asked: _writer imports this module

    app = QApplication.instance()
    if app is None:
        return False
    answer = QMessageBox.question(
        app.activeWindow(), "napari-xmag: replace?",
        f"{reason}.\n\nReplace it? What is at {path} will be deleted.",
        QMessageBox.Yes | QMessageBox.No, QMessageBox.No,
    )
    return answer == QMessageBox.Yes


def in_scroll_area(outer: Any, form: list[Any], wide: list[Any] = ()) -> Any:  # type: ignore[assignment]
    """Lay out a dock: the labelled controls of ``form``, then ``wide`` (status, captions, tables,
    legends) at the dock's full width, all in a vertical scroll area, so that a tall dock scrolls
    rather than making the window taller than the screen, and rows pack at the top. (napari
    docks a Container's inner widget, which drops magicgui's own ``scrollable``.) Returns the
    inner Container; keep a reference to it."""
    from magicgui.widgets import Container
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    body = Container(widgets=[Container(widgets=form), *wide], labels=False)
    body.native.layout().addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    area.setWidget(body.native)
    area.setMinimumWidth(body.native.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width())
    layout = outer.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    return body


def text_label(value: str = "") -> Any:
    """A Label for sentences (status, captions, legends): wrapped to the dock's width, never
    widening it (a long path is cut at the edge rather than pushing the controls off)."""
    from magicgui.widgets import Label
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=value)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.native.setMinimumWidth(1)
    return label


def camera(viewer: Any) -> Any:
    """``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def text_overlay(viewer: Any) -> Any:
    """Napari's text overlay (screen-space text, legible at any zoom): ``viewer.canvas.overlays.text``
    from napari 0.9, ``viewer.text_overlay`` before."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.text if overlays is not None and hasattr(overlays, "text") else viewer.text_overlay


def caption_overlay(viewer: Any, text: str, font_size: int = 12) -> Any:
    """Say what the canvas shows in one line at its top, in screen space (never canvas text)."""
    overlay = text_overlay(viewer)
    overlay.text, overlay.position, overlay.font_size, overlay.visible = text, "top_center", font_size, True
    return overlay


def slide_layers(viewer: napari.viewer.Viewer, *exclude_roles: str) -> list[tuple[str, Any]]:
    """(name, layer) of the Image layers our reader made (they carry ``metadata["xmag"]``)."""
    from napari.layers import Image  # napari only when asked: _writer imports this module

    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, Image)
        and "xmag" in layer.metadata
        and not any(role in layer.metadata for role in exclude_roles)
    ]


def slide_info(layer: Any) -> tuple[str, float | None]:
    """(slide path, the µm/px override to open it with: only when the user gave one)."""
    meta = layer.metadata["xmag"]
    mpp = meta.get("mpp_x") if meta.get("mpp_source") == "override" else None
    return str(meta["path"]), mpp


MPP_OVERRIDE_TIP = ("µm per pixel of the slide's level 0, for a slide that does not record it"
                    " (or records it wrongly); 0 = the file's own. A 20x scan is about 0.5.")


#: The metadata keys of the layers the widgets and the map reader make: never a user's own layer.
WIDGET_KEYS = ("xmag_map", "xmag-inference", "xmag-explorer", "xmag-comparison", "xmag-probe", "xmag-search")


def user_layers(viewer: Any, kinds: tuple[type, ...]) -> list[tuple[str, Any]]:
    """``(name (kind), layer)`` of the layers of ``kinds`` a user made (none a widget owns): the
    choices of an annotations or query control."""
    return [(f"{layer.name} ({type(layer).__name__.lower()})", layer) for layer in viewer.layers
            if isinstance(layer, kinds) and not any(k in layer.metadata for k in WIDGET_KEYS)]


def features_file_edit() -> Any:
    """The one features-file control of the widgets that read one (filled in by fill_features)."""
    from magicgui.widgets import FileEdit

    return FileEdit(label="features", mode="r", filter="*.h5 *.zarr",
                    tooltip="the slide's features file; the XMAG inference widget's is filled in")


def mpp_override_edit() -> Any:
    """The one mpp-override control (the CLI's --mpp-override); 0 means the file's own."""
    from magicgui.widgets import FloatSpinBox

    return FloatSpinBox(label="mpp override", value=0.0, min=0.0, max=100.0, step=0.001,
                        tooltip=MPP_OVERRIDE_TIP)


def layer_mpp_override(layer: Any) -> float:
    """The override a slide layer carries (0.0: none), to show in a widget's mpp field."""
    _, mpp = slide_info(layer)
    return float(mpp or 0.0)


def apply_mpp_override(layer: Any, mpp: float) -> bool:
    """Give a slide layer an mpp override, kept in its metadata (so every widget and the writer
    see it) and in its scale (so the slide is drawn in µm). Returns whether it changed."""
    meta = layer.metadata["xmag"]
    if not mpp or mpp <= 0 or (meta.get("mpp_source") == "override" and meta.get("mpp_x") == mpp):
        return False
    meta.update(mpp_x=float(mpp), mpp_y=float(mpp), mpp_source="override")
    layer.scale = (*layer.scale[:-2], float(mpp), float(mpp))
    layer.units = ("um",) * layer.ndim
    return True


def slide_needs_mpp(layer: Any) -> str | None:
    """Why this slide cannot be used at a magnification yet (no mpp, no override), or None."""
    meta = layer.metadata["xmag"]
    if meta.get("mpp_x"):
        return None
    return (f"{layer.name} records no µm per pixel, so it cannot be cut at a magnification: enter its"
            " mpp override above (e.g. 0.5 for a 20x scan, 0.25 for 40x) and run again.")


def slide_ready(layer: Any, mpp_override: float, status: Any) -> bool:
    """Whether a widget can run on ``layer``: a slide is picked and has an mpp (its own, or the
    override just entered, which the layer keeps). Says why not in ``status``, and notifies a
    missing mpp (the user may not be looking at the dock)."""
    if layer is None:
        status.value = "Open a slide with napari-xmag first (File > Open, or the sample slide)."
        return False
    apply_mpp_override(layer, mpp_override)
    problem = slide_needs_mpp(layer)
    if problem:
        from napari_xmag._widgets._task import notify  # Qt: _writer imports this module

        status.value = problem
        notify(problem)
        return False
    return True


def slide_offset(layer: Any) -> np.ndarray:
    """World offset (µm, y, x) of the slide layer: maps are placed relative to it."""
    return np.asarray(layer.translate[-2:], np.float64)


def owned_layers(viewer: napari.viewer.Viewer, role_key: str, role: str, slide: str) -> list[Any]:
    """The layers a widget owns in ``role`` for ``slide`` (``metadata[role_key]``)."""
    return [layer for layer in viewer.layers
            if (owned := layer.metadata.get(role_key)) and isinstance(owned, dict)
            and owned.get("role") == role and owned.get("slide") == slide]


def replace_layer(viewer: napari.viewer.Viewer, role_key: str, role: str, slide: str,
                  layer_data: tuple[Any, dict[str, Any], str]) -> list[Any]:
    """Add ``layer_data`` as layers owned by a widget, removing the ones it replaces.

    A layer is replaced when its ``metadata[role_key]`` is ``{"role": role, "slide": slide}``.
    """
    for layer in owned_layers(viewer, role_key, role, slide):
        viewer.layers.remove(layer)
    data, kwargs, kind = layer_data
    kwargs = dict(kwargs)
    kwargs["metadata"] = {**kwargs.get("metadata", {}), role_key: {"role": role, "slide": slide}}
    made = getattr(viewer, f"add_{kind}")(data, **kwargs)  # channel_axis makes several
    return list(made) if isinstance(made, list) else [made]


def shifted(layer_data: tuple[Any, dict[str, Any], str], offset: np.ndarray) -> tuple:
    """The layer tuple moved by the slide layer's world ``offset``."""
    data, kwargs, kind = layer_data
    kwargs = dict(kwargs)
    if "translate" in kwargs:
        kwargs["translate"] = tuple(np.asarray(kwargs["translate"], np.float64) + offset)
    return data, kwargs, kind


def fill_features(edit: Any, viewer: Any, layer: Any, filled: str | None) -> str | None:
    """Put the features file of ``layer``'s maps (the inference widget's last run) in ``edit``,
    unless the user chose another file there; returns what is now filled in by us (or None).

    ``filled`` is what this call returned last time: a value the user has not changed since."""
    if layer is None:
        return filled
    path, _ = slide_info(layer)
    found = next((str(meta["features_path"]) for other in reversed(list(viewer.layers))
                  if isinstance(meta := other.metadata.get("xmag_map"), dict)
                  and meta.get("slide_path") == path and meta.get("features_path")), None)
    current = str(edit.value) if edit.value is not None else ""
    if found and found != current and current in ("", ".", filled):
        edit.value = found
        return found
    return filled if current == filled else None
