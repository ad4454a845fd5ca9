"""The Magnification explorer dock widget: wiring only; the work is in :mod:`napari_xmag.magnification`.

Pick a slide layer and a place (the view centre, the last cursor position, a point of a
Points layer or a rectangle of a Shapes layer), press *Show magnifications*: the field of
view appears at 2.5x, 5x, 10x, 20x and 40x in a row beside the slide, each picture at its
physical size (so only the detail differs); the slide gets the 5x student patch and its 16
teacher crops drawn on it. The captions are in the dock and in napari's text overlay, never
canvas text, so they read the same at any zoom. The pictures are read in the background.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton
from napari.layers import Points, Shapes

from napari_xmag import magnification
from napari_xmag._widgets._common import (
    camera,
    caption_overlay,
    in_scroll_area,
    layer_mpp_override,
    mpp_override_edit,
    slide_info,
    slide_layers,
    slide_ready,
    text_label,
)
from napari_xmag._widgets._legend import Legend
from napari_xmag._widgets._task import BackgroundTask
from napari_xmag.slide import SlideError

if TYPE_CHECKING:
    import napari

#: Metadata key of the layers this widget owns; its value names the layer's role.
ROLE = "xmag-explorer"
VIEW_CENTRE = "view centre"
CURSOR = "cursor"
STUDENT_COLOUR = "#ffd400"  # the 5x student patch
TEACHER_COLOUR = "#00e5ff"  # its 20x teacher crops
FIELD_COLOUR = "#ffffff"  # the field of view, when it is not the student patch
ENLARGED_COLOUR = "#ffa040"  # the caption of a view finer than the scan: no extra detail
OVERLAY_SIZE = 12  # screen points


class MagnificationExplorer(Container):
    """Dock widget: one field of view at five magnifications, and the XMAG patch footprint."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._slide_edit = ComboBox(label="slide", choices=self._slide_layers)
        self._mpp_override_edit = mpp_override_edit()
        self._source_edit = ComboBox(
            label="where",
            choices=self._sources,
            tooltip="the view centre, the last cursor position on the canvas, the selected (or last)"
            " point of a Points layer, or the selected (or last) rectangle of a Shapes layer",
        )
        self._fov_edit = FloatSpinBox(
            label="field (µm)",
            value=magnification.DEFAULT_FOV_UM,
            min=16.0,
            max=1000.0,
            step=16.0,
            tooltip="side of the square field around a point; 448 µm is one 5x student patch",
        )
        self._follow_edit = CheckBox(text="update when the point or rectangle moves", value=False)
        self._show_button = PushButton(text="Show magnifications")
        self._captions = text_label()
        self._status = text_label()
        self.legend = Legend()
        self._body = in_scroll_area(self, [
            self._slide_edit, self._mpp_override_edit, self._source_edit, self._fov_edit,
            self._follow_edit, self._show_button,
        ], [self._status, self._captions, self.legend])
        self.task = BackgroundTask("XMAG magnifications", [self._show_button], self._status)
        #: One dict per view (``MagnificationView.row``), left to right, after a *Show*.
        self.rows: list[dict[str, Any]] = []
        self._followed: Any = None
        self._show_button.changed.connect(self._on_show)
        self._slide_edit.changed.connect(self._on_slide_changed)
        self._source_edit.changed.connect(self._on_follow)
        self._follow_edit.changed.connect(self._on_follow)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_slide_changed()

    # ---- choices ------------------------------------------------------------------------
    def _slide_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return slide_layers(self._viewer, ROLE)

    def _sources(self, _widget: Any = None) -> list[tuple[str, Any]]:

        layers = [
            (f"{layer.name} ({type(layer).__name__.lower()})", layer)
            for layer in self._viewer.layers
            if isinstance(layer, (Points, Shapes)) and ROLE not in layer.metadata
        ]
        return [("view centre", VIEW_CENTRE), ("last cursor position", CURSOR), *layers]

    # ---- handlers -----------------------------------------------------------------------
    def _on_layers_changed(self, _event: Any = None) -> None:
        self._slide_edit.reset_choices()
        self._source_edit.reset_choices()

    def _on_slide_changed(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        self._status.value = ""  # what was said about the last slide does not hold for this one
        if layer is not None:
            self._mpp_override_edit.value = layer_mpp_override(layer)

    def _on_follow(self, _event: Any = None) -> None:
        if self._followed is not None:
            self._followed.events.data.disconnect(self._on_source_moved)
            self._followed = None
        source = self._source_edit.value
        if self._follow_edit.value and not isinstance(source, str) and source is not None:
            source.events.data.connect(self._on_source_moved)
            self._followed = source

    def _on_source_moved(self, event: Any = None) -> None:
        # Points and Shapes say "changing" while dragging; read once the move is done.
        if str(getattr(event, "action", "changed")) in ("changed", "added"):
            self._show(frame=False)  # the teacher is working on the slide: leave the view there

    def _on_show(self, _event: Any = None) -> None:
        self._show(frame=True)

    def _show(self, frame: bool) -> None:
        layer = self._slide_edit.value
        if not slide_ready(layer, float(self._mpp_override_edit.value), self._status):
            return
        path, mpp = slide_info(layer)
        translate = tuple(layer.translate[-2:])
        try:  # quick checks here, so that a wrong place is said at once; the reading is not
            slide_explorer = magnification.explorer_for(path, mpp=mpp)
            try:
                fov = self._field_of_view(slide_explorer, translate)
            except ValueError as err:  # the place: off the slide, an empty layer
                raise ValueError(f"{self._source_edit.current_choice}: {err}") from None
        except (SlideError, ValueError, OSError) as err:
            self._status.value = str(err)
            return

        def work(*, progress: Any, cancel: Any) -> tuple[Any, Any]:
            return slide_explorer.views(fov), slide_explorer.footprint(fov.centre)

        self.task.start(work, message="Reading the field at five magnifications...",
                        on_done=lambda result: self._on_views(layer, slide_explorer, fov, frame, *result))

    def _on_views(self, layer: Any, slide_explorer: Any, fov: Any, frame: bool, views: Any,
                  footprint: Any) -> None:
        translate = tuple(layer.translate[-2:])
        arrangement = magnification.layout(views, fov, slide_explorer.slide, translate)
        units = layer.units[-2:]
        panels = [self._show_panel(panel, units) for panel in arrangement.panels]
        outlines = self._show_outlines(arrangement.outlines(footprint, translate), max(fov.size_um), units)
        self.rows = [v.row() for v in views]
        self._captions.value = _captions_html(arrangement.title, views)
        caption_overlay(self._viewer, "  ·  ".join(v.magnification for v in views)
                        + "  (left to right; details in the dock)", OVERLAY_SIZE)
        self.legend.show_layers([outlines])
        notes = [f"{v.magnification}: {v.note}." for v in views if v.note]
        self._status.value = "\n".join(notes) or "Shown: the captions are below."
        if frame:
            self._viewer.fit_to_view(layers=panels, margin=0.1)
        self._viewer.layers.selection.active = layer

    # ---- wiring helpers -----------------------------------------------------------------
    def _field_of_view(
        self, slide_explorer: magnification.SlideExplorer, translate: tuple[float, float]
    ) -> magnification.FieldOfView:
        """The field from the chosen source, as µm relative to the slide layer."""
        source = self._source_edit.value
        slide = slide_explorer.slide
        size = self._fov_edit.value
        if source == VIEW_CENTRE:
            y, x = np.asarray(camera(self._viewer).center[-2:]) - translate
            return magnification.field_of_view(slide, point=(x, y), size_um=size, units="um")
        if source == CURSOR:
            y, x = np.asarray(self._viewer.cursor.position[-2:]) - translate
            return magnification.field_of_view(slide, point=(x, y), size_um=size, units="um")
        items = source.data
        if len(items) == 0:
            raise ValueError(f"{source.name} is empty: add a point or draw a rectangle")
        selected = sorted(source.selected_data)
        item = items[selected[-1] if selected else -1]
        world = np.array([source.data_to_world(v) for v in np.atleast_2d(item)])[:, -2:] - translate
        if isinstance(source, Shapes):
            (y0, x0), (y1, x1) = world.min(0), world.max(0)
            return magnification.field_of_view(slide, box=(x0, y0, x1, y1), units="um")
        y, x = world[-1]
        return magnification.field_of_view(slide, point=(x, y), size_um=size, units="um")

    def _owned(self, role: str) -> Any:
        for layer in self._viewer.layers:
            if layer.metadata.get(ROLE) == role:
                return layer
        return None

    def _show_panel(self, panel: magnification.Panel, units: Any) -> Any:
        view = panel.view
        name = f"{view.magnification} · {view.mpp[0]:.2f} µm/px" + (" (enlarged)" if view.enlarged else "")
        layer = self._owned(view.magnification)
        if layer is None:
            layer = self._viewer.add_image(
                view.image, name=name, rgb=True, scale=panel.scale, translate=panel.translate,
                units=units, metadata={ROLE: view.magnification}, interpolation2d="nearest",
            )
        else:
            layer.scale, layer.translate = panel.scale, panel.translate
            layer.data, layer.name = view.image, name
        return layer

    def _show_outlines(self, outlines: list[magnification.Outline], field_um: float, units: Any) -> Any:
        """The student patch and teacher crops, edges only, on the slide and on the pictures."""
        colours = {"student": STUDENT_COLOUR, "teacher": TEACHER_COLOUR, "field": FIELD_COLOUR}
        # Edge widths in µm, as pixels of a 224 px picture of the field: thin lines (under
        # a screen pixel at the framed zoom) would flicker in and out as the view moves.
        widths = {"student": 3.0, "teacher": 2.0, "field": 3.0}
        pixel = field_um / magnification.PATCH_SIZE  # µm per pixel of a 224 px picture of the field
        features = {
            "label": [o.label for o in outlines],
            "kind": [o.kind for o in outlines],
            "colour": [colours[o.kind] for o in outlines],
        }
        rects = list(magnification.rectangles(np.array([o.box for o in outlines])))
        style = {
            "edge_color": [colours[o.kind] for o in outlines],
            "edge_width": [widths[o.kind] * pixel for o in outlines],
            "face_color": "transparent",
            "z_index": [0 if o.kind == "teacher" else 1 for o in outlines],  # the patch's edge on top
        }
        layer = self._owned("footprint")
        if layer is None:
            return self._viewer.add_shapes(
                rects, shape_type="rectangle", name="XMAG footprint: 5x patch, 20x crops",
                features=features, units=units, metadata={ROLE: "footprint"}, **style,
            )
        # In place (removing a layer costs napari a garbage collection): new shapes, new features.
        layer.selected_data = set(range(layer.nshapes))
        layer.remove_selected()
        layer.add_rectangles(rects, **style)
        layer.features = features
        return layer


def _captions_html(title: str, views: list[Any]) -> str:
    """The dock's captions: the title, then one line per picture, left to right; a view finer
    than the scan (no extra detail) in orange."""
    lines = [f"<b>{title}</b>", "Left to right:"]
    for view in views:
        line = " · ".join(view.caption.split("\n"))
        lines.append(f'<span style="color:{ENLARGED_COLOUR}">{line}</span>' if view.enlarged else line)
    return "<br>".join(lines)
