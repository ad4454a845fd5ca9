"""The XMAG similar-tissue dock widget: wiring only; the work is in :mod:`napari_xmag.search`.

Drop a point (a Points layer) or draw a rectangle (a Shapes layer) on a slide, pick the
slide's features file and, optionally, a folder of features files to search, and press
*Find similar*: in the background, the query is made from the patches under the last point or
rectangle, the slide's similarity heatmap is added (with its colour bar in the dock), and the
top hits of the folder (or of the slide alone) are listed. Selecting a row moves the view to
that patch; a hit on another slide opens that slide, when its file is where its features say.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, SpinBox, Table
from napari.layers import Points, Shapes

from napari_xmag import search
from napari_xmag._widgets._common import (
    WIDGET_KEYS,
    camera,
    features_file_edit,
    fill_features,
    in_scroll_area,
    replace_layer,
    shifted,
    slide_info,
    slide_layers,
    slide_offset,
    slide_ready,
    text_label,
    user_layers,
)
from napari_xmag._widgets._legend import Legend
from napari_xmag._widgets._task import BackgroundTask, notify
from napari_xmag.provenance import random_weights_warning
from napari_xmag.slide import level0_to_um, um_to_level0

if TYPE_CHECKING:
    import napari

#: Metadata key of the layers this widget owns: ``{"role": ..., "slide": path}``.
ROLE = "xmag-search"
COLUMNS = ("slide", "x", "y", "score")


def query_region(query_layer: Any, slide_layer: Any) -> tuple[float, float, float | None, float | None]:
    """The last point, or the selected (else last) shape's bounding box, of a layer in the slide's
    level-0 px: ``(x, y, None, None)`` or ``(x, y, width, height)``.

    World µm to level 0 as the reader places the slide (pixel ``x`` centred at ``x * mpp`` plus
    the layer's translate), so the region is where it is drawn whatever the layers' transforms.
    """
    if len(query_layer.data) == 0:
        raise search.SearchError(f"{query_layer.name} is empty: add a point or draw a rectangle on the slide")
    mpp_y, mpp_x = (float(s) for s in slide_layer.scale[-2:])
    ty, tx = (float(t) for t in slide_layer.translate[-2:])
    if isinstance(query_layer, Points):
        y, x = np.asarray(query_layer.data_to_world(query_layer.data[-1]), np.float64)[-2:]
        px, py = um_to_level0([x, y], (mpp_x, mpp_y), (tx, ty))
        return float(px), float(py), None, None
    selected = sorted(query_layer.selected_data)
    item = query_layer.data[selected[-1] if selected else -1]
    world = np.array([query_layer.data_to_world(v) for v in np.atleast_2d(item)])[:, -2:]
    (y0, x0), (y1, x1) = world.min(0), world.max(0)
    px0, py0, px1, py1 = um_to_level0([x0, y0, x1, y1], (mpp_x, mpp_y), (tx, ty))
    return float(px0), float(py0), float(px1 - px0), float(py1 - py0)


class SearchWidget(Container):
    """Dock widget: find the tissue most like a point or rectangle, on this slide and in a folder."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._slide_edit = ComboBox(label="slide", choices=self._slide_layers)
        self._filled: str | None = None  # the features file we filled in, until the user changes it
        self._features_edit = features_file_edit()
        self._query_edit = ComboBox(
            label="query", choices=self._query_layers,
            tooltip="the last point of a Points layer, or the selected (else last) rectangle of a Shapes"
            " layer: the patches under it are the query",
        )
        self._mode_edit = ComboBox(
            label="mode", choices=search.MODES, value="mean",
            tooltip="mean: the region's mean embedding; prototypes: a patch's score is its best cosine"
            " to any patch of the region",
        )
        self._folder_edit = FileEdit(
            label="search folder", mode="d", value="",
            tooltip="a folder of features files of the same model (xmag embed / xmag batch output);"
            " empty: this slide only",
        )
        self._top_edit = SpinBox(label="top", value=10, min=1, max=1000)
        self._search_button = PushButton(text="Find similar")
        self._cancel_button = PushButton(text="Cancel")
        buttons = Container(widgets=[self._search_button, self._cancel_button], layout="horizontal",
                            labels=False)
        self._table = Table()
        self._table.read_only = True
        self._table.native.setMaximumHeight(300)  # it scrolls: the dock fits a 1000 px screen
        self._status = text_label()
        self.legend = Legend()
        self._body = in_scroll_area(self, [
            self._slide_edit, self._features_edit, self._query_edit, self._mode_edit, self._folder_edit,
            self._top_edit, buttons,
        ], [self._status, self._table, self.legend])
        self.task = BackgroundTask("XMAG similar tissue", [self._search_button], self._status,
                                   self._cancel_button, cancelled_types=(search.SearchCancelled,))
        self.hits: list[search.Hit] = []
        self._search_button.changed.connect(self._on_search)
        self._slide_edit.changed.connect(self._on_slide_changed)
        self._table.native.itemSelectionChanged.connect(self._on_row_selected)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_slide_changed()

    # ---- choices ------------------------------------------------------------------------
    def _slide_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return slide_layers(self._viewer, *WIDGET_KEYS)

    def _query_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return user_layers(self._viewer, (Points, Shapes))

    # ---- handlers -----------------------------------------------------------------------
    def _on_layers_changed(self, _event: Any = None) -> None:
        self._slide_edit.reset_choices()
        self._query_edit.reset_choices()
        self._on_slide_changed()

    def _on_slide_changed(self, _event: Any = None) -> None:
        # the slide's features, unless the user picked another file (a new layer must not undo that)
        self._filled = fill_features(self._features_edit, self._viewer, self._slide_edit.value,
                                     self._filled)

    def _on_search(self, _event: Any = None) -> None:
        layer, query_layer = self._slide_edit.value, self._query_edit.value
        if not slide_ready(layer, 0.0, self._status):
            return
        if query_layer is None:
            self._status.value = "Add a Points layer (a point) or a Shapes layer (a rectangle) on the slide."
            return
        try:  # read here: the layers may change while the search runs
            region = query_region(query_layer, layer)
        except search.SearchError as err:
            self._status.value = str(err)
            return
        features, mode, top = str(self._features_edit.value), self._mode_edit.value, int(self._top_edit.value)
        folder = str(self._folder_edit.value or "").strip()
        folder = "" if folder in ("", ".") else folder
        if not (Path(features).is_file() or (Path(features).suffix == ".zarr" and Path(features).is_dir())):
            self._status.value = (f"{features}: no features file: run the XMAG inference widget (or `xmag"
                                  " embed`) on the slide first")
            return

        def work(*, progress: Any, cancel: Any) -> tuple[search.Query, Any, Any]:
            query = search.query_from_region(features, *region, mode=mode)
            heat = search.similarity_map(features, query)
            if folder:
                found: Any = search.search_folder(folder, query, top, progress=progress, cancel=cancel)
            else:
                found = search.slide_hits(features, query, top)
            return query, heat, found

        where = f"in {folder}" if folder else "on this slide"
        self.task.start(work, message=f"Finding tissue like {query_layer.name} {where}...",
                        on_done=lambda result: self._on_found(layer, result))

    def _on_found(self, slide_layer: Any, result: tuple[search.Query, Any, Any]) -> None:
        query, heat, found = result
        path, _ = slide_info(slide_layer)
        shown = replace_layer(self._viewer, ROLE, "similarity", path,
                              shifted(heat.layer_data(), slide_offset(slide_layer)))
        self.legend.show_layers(shown)
        self._viewer.layers.selection.active = slide_layer
        if heat.metadata.get("weights_random"):
            notify(random_weights_warning("the features, and so the similarities,").removeprefix("warning: "))
        hits = found.hits if isinstance(found, search.SearchResult) else found
        self.hits = list(hits)
        self._table.value = {
            "data": [[h.slide, h.x, h.y, round(h.score, 4)] for h in self.hits],
            "index": [str(i) for i in range(1, len(self.hits) + 1)], "columns": list(COLUMNS),
        }
        self._table.native.resizeColumnsToContents()
        patches = len(query.source.get("coords") or [])
        summary = (found.summary() if isinstance(found, search.SearchResult)
                   else f"the top {len(self.hits)} of this slide")
        self._status.value = f"query: {patches} patch(es), {query.mode}; {summary}. Select a row to go there."

    def _on_row_selected(self) -> None:
        rows = sorted({index.row() for index in self._table.native.selectedIndexes()})
        if rows:
            self.go_to(rows[0])

    # ---- going to a hit -----------------------------------------------------------------
    def go_to(self, row: int) -> None:
        """Centre the view on hit ``row``; a hit on a slide not open is opened in the background."""
        if not 0 <= row < len(self.hits):
            return
        hit = self.hits[row]
        layer = self._layer_of(hit)
        if layer is not None:
            self._centre(layer, hit)
            return
        if not hit.slide_path or not Path(hit.slide_path).is_file():
            self._status.value = (f"Hit {row + 1} is on {hit.slide} ({hit.features}); its slide file"
                                  f" {hit.slide_path or '(not recorded)'} is not here: open it to go there.")
            return

        def work(*, progress: Any, cancel: Any) -> Any:
            from napari_xmag._reader import slide_layer_data  # the reader's own layer for the slide

            return slide_layer_data(hit.slide_path)

        def opened(data: Any) -> None:
            from napari.layers import Layer

            new = self._viewer.add_layer(Layer.create(*data))
            self._centre(new, hit)
            self._status.value = f"Opened {hit.slide} for hit {row + 1}; it lies over the other slides."

        self.task.start(work, message=f"Opening {hit.slide} for hit {row + 1}...", on_done=opened)

    def _layer_of(self, hit: search.Hit) -> Any:
        """The slide layer a hit is on: the one whose file its features name."""
        for _, layer in slide_layers(self._viewer, *WIDGET_KEYS):
            path, _ = slide_info(layer)
            if hit.slide_path and _same_file(path, hit.slide_path):
                return layer
        current = self._slide_edit.value
        if current is not None and hit.features and _same_file(hit.features, str(self._features_edit.value)):
            return current
        return None

    def _centre(self, layer: Any, hit: search.Hit) -> None:
        mpp_y, mpp_x = (float(s) for s in layer.scale[-2:])
        ty, tx = (float(t) for t in layer.translate[-2:])
        x, y = level0_to_um([hit.x + hit.size / 2, hit.y + hit.size / 2], (mpp_x, mpp_y), (tx, ty))
        view = camera(self._viewer)
        view.center = (*tuple(view.center[:-2]), float(y), float(x))
        layer.visible = True
        self._status.value = f"{hit.slide} ({hit.x}, {hit.y}): cosine {hit.score:.4f}"


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
