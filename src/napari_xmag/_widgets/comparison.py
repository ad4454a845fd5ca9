"""The teacher comparison dock widget: wiring only; the work is in :mod:`napari_xmag.compare`.

Pick a slide layer, a student and a teacher, and where: the whole slide (a GPU job) or the
last rectangle of a Shapes layer (CPU-friendly), press *Run*; or *Load* a folder an earlier
run (or ``xmag compare``) wrote. Three panels appear side by side, each over the slide:

* on the slide itself, the per-patch student-teacher cosine (:func:`napari_xmag.compare.cosine_map`, aligned
  with the slide layer);
* one slide width to the right, a copy of the slide with the student's k-means clusters;
* two slide widths to the right, a copy with the teacher's k-means clusters on the same
  patches, their colours matched to the student's clusters (the ARI compares these two).

Side by side rather than stacked, so that the two clusterings can be compared at a glance and
the cosine map never hides them; the copies share the slide's pyramid (no extra memory). After
a run the view frames the three panels; what they are is said in napari's text overlay and in
the dock (never as canvas text), with the cosine's colour bar and the clusters' key. The table
gives patch counts, wall times, speed-up, cosine, CKA and ARI from the report, with a caveat
under 30 patches. Models load and run in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Table
from napari.layers import Shapes

from napari_xmag import compare, maps
from napari_xmag._paths import user_cache_dir
from napari_xmag._widgets._common import (
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
from napari_xmag._widgets._task import BackgroundTask, notify
from napari_xmag.compare import SMALL_SAMPLE, matched_labels, report_rows
from napari_xmag.embed import EmbedCancelled
from napari_xmag.models.precision import PRECISIONS
from napari_xmag.models.registry import list_models
from napari_xmag.provenance import random_weights_warning, tagged_name
from napari_xmag.slide import um_to_level0

if TYPE_CHECKING:
    import napari

#: Metadata key of the layers this widget owns; its value names the layer's role.
ROLE = "xmag-comparison"
WHOLE_SLIDE = "whole slide (GPU)"
RANDOM = "random"
WEIGHTS = ("auto", RANDOM)
GAP = 0.05  # between the panels, as a fraction of the slide width


def roi_from_rectangle(
    corners_um: np.ndarray, mpp: tuple[float, float], translate: tuple[float, float] = (0.0, 0.0)
) -> tuple[int, int, int, int]:
    """Level-0 ``(x, y, w, h)`` of a rectangle given by its world corners (µm, rows of y, x).

    Level-0 pixel ``x`` is centred at ``x * mpp`` (napari's convention), so the world edge
    ``u`` µm is the pixel boundary ``u / mpp + 0.5``; boundaries are rounded to whole pixels.
    """
    world = np.asarray(corners_um, np.float64)[:, -2:]
    (y0, x0), (y1, x1) = world.min(0), world.max(0)
    mpp_y, mpp_x = mpp
    ty, tx = translate
    px0, py0, px1, py1 = (round(v) for v in um_to_level0([x0, y0, x1, y1], (mpp_x, mpp_y), (tx, ty)))
    return (int(px0), int(py0), int(px1 - px0), int(py1 - py0))


class ComparisonWidget(Container):
    """Dock widget: the 5x student against the 20x teacher, on a slide or a rectangle of it."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._slide_edit = ComboBox(label="slide", choices=self._slide_layers)
        students = [n for n in list_models() if n == "xmag"] or list_models()
        teachers = [n for n in list_models() if n != "xmag"]
        self._student_edit = ComboBox(label="student", choices=students, value=students[0])
        self._teacher_edit = ComboBox(label="teacher", choices=teachers, value=teachers[0])
        self._weights_edit = ComboBox(
            label="weights", choices=WEIGHTS, value="auto",
            tooltip="auto: each model's own weights (hub or cache); random: untrained, for trying the"
            " plumbing only (every number and map is then noise)",
        )
        self._mpp_override_edit = mpp_override_edit()
        self._precision_edit = ComboBox(label="precision", choices=PRECISIONS, value="auto",
                                        tooltip="as xmag compare --precision")
        self._roi_edit = ComboBox(
            label="where", choices=self._roi_sources,
            tooltip="the whole slide (hours of teacher time on a CPU), or the selected (or last)"
            " rectangle of a Shapes layer",
        )
        self._out_edit = FileEdit(label="output folder", mode="d",
                                  tooltip="where compare.h5 and report.json go (Run) or are (Load)")
        self._run_button = PushButton(text="Run")
        self._load_button = PushButton(text="Load")
        self._cancel_button = PushButton(text="Cancel")
        buttons = Container(widgets=[self._run_button, self._load_button, self._cancel_button],
                            layout="horizontal", labels=False)
        self._table = Table()
        self._table.read_only = True
        self._table.native.setMaximumHeight(300)  # it scrolls: the dock fits a 1000 px screen
        self._status = text_label()
        self.legend = Legend()
        self._body = in_scroll_area(self, [
            self._slide_edit, self._mpp_override_edit, self._student_edit, self._teacher_edit,
            self._weights_edit, self._precision_edit, self._roi_edit, self._out_edit, buttons,
        ], [self._status, self._table, self.legend])
        self.task = BackgroundTask(
            "XMAG teacher comparison", [self._run_button, self._load_button], self._status,
            self._cancel_button, cancelled_types=(EmbedCancelled,),
        )
        self.result: compare.ComparisonResult | None = None
        self._run_button.changed.connect(self._on_run)
        self._load_button.changed.connect(self._on_load)
        self._weights_edit.changed.connect(self._on_weights)
        self._slide_edit.changed.connect(self._on_slide_changed)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_slide_changed()

    # ---- choices ------------------------------------------------------------------------
    def _slide_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return slide_layers(self._viewer, ROLE)

    def _roi_sources(self, _widget: Any = None) -> list[tuple[str, Any]]:

        shapes = [(f"{layer.name} (rectangle)", layer) for layer in self._viewer.layers
                  if isinstance(layer, Shapes) and ROLE not in layer.metadata]
        return [(WHOLE_SLIDE, WHOLE_SLIDE), *shapes]

    # ---- handlers -----------------------------------------------------------------------
    def _on_layers_changed(self, _event: Any = None) -> None:
        self._slide_edit.reset_choices()
        self._roi_edit.reset_choices()

    def _on_slide_changed(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        if layer is not None:
            self._mpp_override_edit.value = layer_mpp_override(layer)

    def _on_weights(self, _event: Any = None) -> None:
        if self._weights_edit.value == RANDOM:
            self._status.value = ("Random weights: for trying the plumbing only; every number and map"
                                  " is noise.")

    def _on_run(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        if not slide_ready(layer, float(self._mpp_override_edit.value), self._status):
            return
        try:
            roi = self._roi()
        except ValueError as err:
            self._status.value = str(err)
            return
        path, mpp = slide_info(layer)
        out = self._out_dir(layer)
        weights = "random" if self._weights_edit.value == RANDOM else "auto"
        student, teacher = self._student_edit.value, self._teacher_edit.value
        precision = self._precision_edit.value

        def work(*, progress: Any, cancel: Any) -> compare.ComparisonResult:
            from napari_xmag.models import create_model  # torch: only once the user runs one

            s = create_model(student, weights=weights)
            t = create_model(teacher, weights=weights)
            return compare.compare_slide(path, s, t, out, roi=roi, mpp_override=mpp, precision=precision,
                                         progress=progress, cancel=cancel)

        where = "the whole slide" if roi is None else f"ROI x={roi[0]} y={roi[1]} w={roi[2]} h={roi[3]} px"
        self.task.start(work, message=f"Comparing {student} with {teacher} on {where} -> {out}",
                        on_done=self._on_result)

    def _on_load(self, _event: Any = None) -> None:
        folder = self._out_edit.value
        try:
            result = compare.read_comparison(folder)
        except (compare.ComparisonFileError, OSError, KeyError, ValueError) as err:
            self._status.value = f"{folder}: {err}"
            return
        self._on_result(result)

    def _on_result(self, result: compare.ComparisonResult) -> None:
        self.result = result
        cos = compare.cosine_map(result)
        translate, width_um = self._slide_frame(result)
        shift = width_um * (1 + GAP)
        slide = self._slide_for(result)
        data, kw, _ = cos.layer_data()
        kw["translate"] = tuple(np.add(kw["translate"], translate))
        shown = [self._show_image("cosine", data, kw)]
        grid = cos.grid
        rows, cols = grid.cells(result.coords)
        s_lab = np.asarray(result.student_clusters, np.int64)
        t_lab = matched_labels(s_lab, np.asarray(result.teacher_clusters, np.int64))
        k = int(result.report["clusters"])
        r = result.report
        panels = [] if slide is None else [slide]
        slide_name = Path(str(r["slide"])).stem
        for i, (side, labels) in enumerate((("student", s_lab), ("teacher", t_lab)), start=1):
            offset = (translate[0], translate[1] + i * shift)
            if slide is not None:
                panels.append(self._show_slide_copy(side, slide, offset))
            raster = maps.rasterize_labels(grid, rows, cols, labels)
            name = tagged_name(f"{side} clusters · {r[side]['model']} · {slide_name}",
                               r[side]["weights"]["random"])
            shown.append(self._show_labels(side, raster, grid, offset, name, maps.label_colors(k),
                                           bool(r[side]["weights"]["random"])))
        rows_ = report_rows(result.report)
        self._table.value = {"data": [[v] for v in rows_.values()], "index": list(rows_),
                             "columns": ["value"]}
        self._table.native.resizeColumnsToContents()
        self.legend.show_layers(shown)
        caption_overlay(self._viewer,
                        f"cosine  ·  student clusters  ·  teacher clusters (k = {k})  (left to right)")
        self._status.value = result.summary()
        for side in ("student", "teacher"):
            if r[side]["weights"]["random"]:
                notify(random_weights_warning("the comparison's numbers", side).removeprefix("warning: "))
        if r["patches"]["student"] < SMALL_SAMPLE:
            notify(rows_["caveat"], "info")
        if r.get("clusters_requested") and k < int(r["clusters_requested"]):
            notify(f"k-means: K = {k}, not {r['clusters_requested']}: only {r['patches']['student']}"
                   " patches were compared", "info")
        self._viewer.fit_to_view(layers=[*panels, *shown], margin=0.05)  # the three panels in view
        if slide is not None:
            self._viewer.layers.selection.active = slide

    # ---- wiring helpers -----------------------------------------------------------------
    def _roi(self) -> tuple[int, int, int, int] | None:
        source = self._roi_edit.value
        if source == WHOLE_SLIDE or source is None:
            return None
        if len(source.data) == 0:
            raise ValueError(f"{source.name} is empty: draw a rectangle on the slide")
        selected = sorted(source.selected_data)
        item = source.data[selected[-1] if selected else -1]
        corners = np.array([source.data_to_world(v) for v in np.atleast_2d(item)])
        layer = self._slide_edit.value
        return roi_from_rectangle(corners, tuple(layer.scale[-2:]), tuple(layer.translate[-2:]))

    def _out_dir(self, layer: Any) -> Path:
        value = self._out_edit.value
        if value is not None and str(value) not in ("", "."):
            return Path(value)
        out = user_cache_dir() / "comparisons" / Path(layer.metadata["xmag"]["path"]).stem
        self._out_edit.value = out
        return out

    def _slide_for(self, result: compare.ComparisonResult) -> Any:
        """The slide layer the comparison was made on: the chosen one, else one with its path."""
        want = Path(str(result.report.get("slide", "")))
        layers = [layer for _, layer in self._slide_layers()]
        chosen = self._slide_edit.value
        if chosen is not None:
            layers.insert(0, chosen)
        for layer in layers:
            if Path(str(layer.metadata["xmag"].get("path", ""))).name == want.name:
                return layer
        return None

    def _slide_frame(self, result: compare.ComparisonResult) -> tuple[tuple[float, float], float]:
        """The slide layer's translate (µm, y, x) and the slide's width in µm."""
        r = result.report
        slide = self._slide_for(result)
        translate = (0.0, 0.0) if slide is None else tuple(float(t) for t in slide.translate[-2:])
        return translate, float(r["slide_dimensions"][0]) * float(r["slide_mpp"])  # type: ignore[return-value]

    def _owned(self, role: str) -> Any:
        for layer in self._viewer.layers:
            if layer.metadata.get(ROLE) == role:
                return layer
        return None

    def _show_image(self, role: str, data: Any, kw: dict[str, Any]) -> Any:
        layer = self._owned(role)
        if layer is not None:
            self._viewer.layers.remove(layer)
        kw = {**kw, "metadata": {**kw.get("metadata", {}), ROLE: role}}
        return self._viewer.add_image(data, **kw)

    def _show_slide_copy(self, side: str, slide: Any, offset: tuple[float, float]) -> Any:
        role = f"{side} slide"
        layer = self._owned(role)
        if layer is None:
            return self._viewer.add_image(
                slide.data, rgb=True, multiscale=slide.multiscale, scale=slide.scale[-2:],
                translate=offset, units=slide.units[-2:], contrast_limits=(0, 255),
                name=f"{side} panel · {slide.name}", metadata={ROLE: role},
            )
        layer.translate = offset
        return layer

    def _show_labels(self, side: str, raster: np.ndarray, grid: Any, offset: tuple[float, float],
                     name: str, colors: list[list[int]], random: bool) -> Any:
        cmap = maps.label_colormap(colors)
        translate = (grid.translate[0] + offset[0], grid.translate[1] + offset[1])
        role = f"{side} clusters"
        layer = self._owned(role)
        if layer is not None:
            self._viewer.layers.remove(layer)
        return self._viewer.add_labels(
            raster.astype(np.int32), name=name, scale=grid.scale, translate=translate,
            units=("um", "um"), opacity=0.6, colormap=cmap, metadata={ROLE: role, "weights_random": random},
            features=maps.class_features(maps.cluster_names(len(colors))),
        )
