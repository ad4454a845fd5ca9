"""The Magnification explorer dock widget: wiring only; the work is in :mod:`napari_xmag.magnification`.

Pick a slide layer and a place (the view centre, the last cursor position, a point of a
Points layer or a rectangle of a Shapes layer), press *Show magnifications*: the field of
view appears at 2.5x, 5x, 10x, 20x and 40x in a row beside the slide, each picture at its
physical size (so only the detail differs), captioned on the canvas and in the table; the
slide gets the 5x student patch and its 16 teacher crops drawn on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, Table
from napari.layers import Points, Shapes

from napari_xmag import magnification
from napari_xmag._widgets._common import slide_layers
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
TEXT_COLOUR = "#ffffff"
ENLARGED_COLOUR = "#ffa040"  # the caption of a view finer than the scan: no extra detail
CAPTION_SIZE = 10  # screen points


class MagnificationExplorer(Container):
    """Dock widget: one field of view at five magnifications, and the XMAG patch footprint."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._slide_edit = ComboBox(label="slide", choices=self._slide_layers)
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
        self._table = Table()
        self._table.read_only = True
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend(
            [self._slide_edit, self._source_edit, self._fov_edit, self._follow_edit,
             self._show_button, self._table, self._status]
        )
        self._followed: Any = None
        self._show_button.changed.connect(self._on_show)
        self._source_edit.changed.connect(self._on_follow)
        self._follow_edit.changed.connect(self._on_follow)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)

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
        if layer is None:
            self._status.value = "Open a slide with napari-xmag first."
            return
        meta = layer.metadata["xmag"]
        mpp = meta.get("mpp_x") if meta.get("mpp_source") == "override" else None
        translate = tuple(layer.translate[-2:])
        try:
            slide_explorer = magnification.explorer_for(meta["path"], mpp=mpp)
            try:
                fov = self._field_of_view(slide_explorer, translate)
            except ValueError as err:  # the place: off the slide, an empty layer
                raise ValueError(f"{self._source_edit.current_choice}: {err}") from None
            views = slide_explorer.views(fov)
            footprint = slide_explorer.footprint(fov.centre)
        except (SlideError, ValueError, OSError) as err:  # no mpp, a corrupt tile, too big a field
            self._status.value = str(err)
            return
        arrangement = magnification.layout(views, fov, slide_explorer.slide, translate)
        units = layer.units[-2:]
        panels = [self._show_panel(panel, units) for panel in arrangement.panels]
        captions = self._show_text(
            "captions", "magnification captions", [p.caption_at for p in arrangement.panels],
            [p.view.caption for p in arrangement.panels], "lower_left", units,
            colours=[ENLARGED_COLOUR if p.view.enlarged else TEXT_COLOUR for p in arrangement.panels],
        )
        title = self._show_text(
            "title", "magnification title", [arrangement.title_at], [arrangement.title], "upper_left", units,
        )
        self._show_outlines(arrangement.outlines(footprint, translate), max(fov.size_um), units)
        self._table.value = {
            "data": [[v.row()[key] for v in views] for key in _TABLE_ROWS],
            "index": list(_TABLE_ROWS),
            "columns": [v.magnification for v in views],
        }
        self._fit_table()
        notes = [f"{v.magnification}: {v.note}." for v in views if v.note]
        self._status.value = "\n".join([arrangement.title, *notes])
        if frame:
            self._viewer.fit_to_view(layers=[*panels, captions, title], margin=0.1)
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
            y, x = np.asarray(self._camera().center[-2:]) - translate
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

    def _fit_table(self) -> None:
        """Columns as wide as their contents (the dock keeps its width; the table scrolls)."""
        self._table.native.resizeColumnsToContents()

    def _camera(self) -> Any:
        """``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
        viewer = self._viewer
        return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera

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

    def _show_text(
        self, role: str, name: str, points: list, texts: list[str], anchor: str, units: Any,
        colours: list[str] | None = None,
    ) -> Any:
        """A Points layer that shows only text: ``texts[i]`` anchored at world ``points[i]`` (y, x)."""
        data = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        features = {"caption": list(texts), "colour": colours or [TEXT_COLOUR] * len(texts)}
        layer = self._owned(role)
        if layer is None:
            return self._viewer.add_points(
                data, name=name, features=features, size=0.0, face_color="transparent",
                border_color="transparent", units=units, metadata={ROLE: role},
                text={"string": "{caption}", "color": {"feature": "colour"}, "size": CAPTION_SIZE,
                      "anchor": anchor},
            )
        layer.data = data
        layer.features = features
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
                features=features, units=units, metadata={ROLE: "footprint"},
                text={"string": "{label}", "color": {"feature": "colour"}, "size": CAPTION_SIZE,
                      "anchor": "upper_left"},
                **style,
            )
        # In place (removing a layer costs napari a garbage collection): new shapes, new features.
        layer.selected_data = set(range(layer.nshapes))
        layer.remove_selected()
        layer.add_rectangles(rects, **style)
        layer.features = features
        layer.refresh_text()
        return layer


_TABLE_ROWS = ("µm/px", "level", "resampling", "field (µm)", "pixels", "patches/slide")
