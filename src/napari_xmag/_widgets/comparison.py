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

Below it, *where the student disagrees* (:mod:`napari_xmag.compare.disagreement`): the scored
patches ranked from the lowest cosine, and the cosine per student cluster, the weakest first.
*Next* / *Previous* (or a click on a row, or :meth:`ComparisonWidget.show_rank`) step through
the ranking: the view centres on the patch, framed with what each model saw of it at its
physical size, the 5x patch to its left and the teacher's 16 crops to its right as a 4 x 4
mosaic, read from the slide in the background; the scores are in the dock, the captions in
the text overlay.
"""

from __future__ import annotations

import math
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
from napari_xmag._widgets.magnification import STUDENT_COLOUR, TEACHER_COLOUR
from napari_xmag.compare import SMALL_SAMPLE, matched_labels, report_rows
from napari_xmag.compare.disagreement import (
    ClusterAgreement,
    PatchViews,
    cluster_agreement,
    disagreement_ranking,
    disagreement_views,
)
from napari_xmag.compare.tables import RankedPatch
from napari_xmag.embed import EmbedCancelled
from napari_xmag.models.precision import PRECISIONS
from napari_xmag.models.registry import list_models
from napari_xmag.provenance import random_weights_warning
from napari_xmag.slide import Slide, level0_to_um, um_to_level0
from napari_xmag.stain import STAIN_METHODS

if TYPE_CHECKING:
    import napari

#: Metadata key of the layers this widget owns; its value names the layer's role.
ROLE = "xmag-comparison"
WHOLE_SLIDE = "whole slide (GPU)"
RANDOM = "random"
WEIGHTS = ("auto", RANDOM)
GAP = 0.05  # between the panels, as a fraction of the slide width
TOP = 25  # rows of the ranking table (Next steps on through every scored patch)
VIEW_GAP = 0.1  # between the patch and each model's picture of it, as a fraction of the patch
PATCH_COLOUR = "#ff3050"  # the ranked patch on the slide
#: The roles of the layers a step shows (replaced by the next step, removed by the next result).
STEP_ROLES = ("student view", "teacher mosaic", "disagreement outlines")


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
        self._stain_edit = ComboBox(label="stain normalisation", choices=STAIN_METHODS, value="none",
                                    tooltip="as xmag compare --stain-norm: fitted once on the slide's tissue,"
                                    " to the bundled H&E reference; both models see the normalised patches")
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
        self._ranking_table = _table(220)
        self._clusters_table = _table(220)
        self._previous_button = PushButton(text="Previous")
        self._next_button = PushButton(text="Next")
        steps = Container(widgets=[self._previous_button, self._next_button], layout="horizontal",
                          labels=False)
        self._step_status = text_label("Run or load a comparison to rank its patches.")
        self._body = in_scroll_area(self, [
            self._slide_edit, self._mpp_override_edit, self._student_edit, self._teacher_edit,
            self._weights_edit, self._precision_edit, self._stain_edit, self._roi_edit, self._out_edit,
            buttons,
        ], [self._status, self._table,
            text_label("<b>Where the student disagrees</b> (lowest cosine first)"), self._ranking_table,
            steps, self._step_status, text_label("<b>Cosine per student cluster</b> (weakest first)"),
            self._clusters_table, self.legend])
        self.task = BackgroundTask(
            "XMAG teacher comparison", [self._run_button, self._load_button], self._status,
            self._cancel_button, cancelled_types=(EmbedCancelled,),
        )
        self.views_task = BackgroundTask("XMAG disagreement views",
                                         [self._previous_button, self._next_button], self._step_status)
        self.result: compare.ComparisonResult | None = None
        #: The ranked patches of the result (rank 1 first), its cluster table, the rank shown (0: none).
        self.ranking: list[RankedPatch] = []
        self.clusters: ClusterAgreement | None = None
        self.rank = 0
        self.views: PatchViews | None = None
        self._shown: list[Any] = []
        self._run_button.changed.connect(self._on_run)
        self._load_button.changed.connect(self._on_load)
        self._weights_edit.changed.connect(self._on_weights)
        self._next_button.changed.connect(self._on_next)
        self._previous_button.changed.connect(self._on_previous)
        self._ranking_table.native.cellClicked.connect(lambda row, _col: self.show_rank(row + 1))
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
        precision, stain = self._precision_edit.value, self._stain_edit.value

        def work(*, progress: Any, cancel: Any) -> compare.ComparisonResult:
            from napari_xmag.models import create_model  # torch: only once the user runs one

            s = create_model(student, weights=weights)
            t = create_model(teacher, weights=weights)
            return compare.compare_slide(path, s, t, out, roi=roi, mpp_override=mpp, precision=precision,
                                         stain_norm=stain, progress=progress, cancel=cancel)

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
            name = f"{side} clusters · {r[side]['model']} · {slide_name}"
            shown.append(self._show_labels(side, raster, cos, offset, name, maps.label_colors(k),
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
        self._shown = shown
        self._show_disagreement(result)

    # ---- where the student disagrees ----------------------------------------------------------
    def _show_disagreement(self, result: compare.ComparisonResult) -> None:
        """The ranking and cluster tables of a new result (numpy on N patches: milliseconds)."""
        for role in STEP_ROLES:  # the last result's pictures are not of this one
            layer = self._owned(role)
            if layer is not None:
                self._viewer.layers.remove(layer)
        self.ranking, self.rank, self.views = disagreement_ranking(result), 0, None
        self.clusters = cluster_agreement(result)
        colors = maps.label_colors(max(self.clusters.k, int(result.report.get("clusters") or 0)))
        top = self.ranking[:TOP]
        self._ranking_table.value = {
            "data": [[p.rank, p.x, p.y, f"{p.cosine:.3f}", p.cluster] for p in top],
            "index": [p.rank for p in top], "columns": ["rank", "x", "y", "cosine", "cluster"],
        }
        _colour_column(self._ranking_table, 4,
                       [colors[p.cluster - 1] if p.cluster >= 1 else None for p in top])
        rows = self.clusters.rows
        self._clusters_table.value = {
            "data": [[r.name, r.patches, r.scored, _cos(r.mean), _cos(r.median), _cos(r.lowest),
                      f"{r.share:.0%}"] for r in rows],
            "index": list(range(1, len(rows) + 1)),
            "columns": ["cluster", "patches", "scored", "mean", "median", "lowest", "share"],
        }
        _colour_column(self._clusters_table, 0, [colors[r.cluster - 1] if r.cluster >= 1 else None
                                                 for r in rows])
        for table in (self._ranking_table, self._clusters_table):
            table.native.resizeColumnsToContents()
        n, total = len(self.ranking), len(result)
        weakest = self.clusters.weakest
        self._step_status.value = (
            f"{n} of {total} patches scored ({result.mapping}); Next shows the one of least agreement."
            + (f" The student is weakest on {weakest.name} (mean cosine {weakest.mean:.3f})."
               if weakest is not None and sum(1 for r in rows if r.scored) > 1 else "")
            if n else f"No patch of the {total} was scored ({result.mapping}): nothing to rank."
        )

    def _on_next(self, _event: Any = None) -> None:
        self.show_rank(self.rank + 1)

    def _on_previous(self, _event: Any = None) -> None:
        self.show_rank(self.rank - 1)

    def show_rank(self, rank: int) -> bool:
        """Step to the patch at ``rank`` (1 = least agreement): centre the view on it, say its
        scores, and read what each model saw of it in the background. False when out of range."""
        if self.result is None or not self.ranking:
            self._step_status.value = "Run or load a comparison with scored patches first."
            return False
        if self.views_task.running:  # a click on the table while the last step is read
            self._step_status.value = "Reading the last step's pictures: step again in a moment."
            return False
        if not 1 <= rank <= len(self.ranking):
            where = "first" if rank < 1 else "last"
            said = [self._scores(self.rank), f"That was the {where} ranked patch."]
            self._step_status.value = "\n".join(line for line in said if line)
            return False
        result, patch = self.result, self.ranking[rank - 1]
        self.rank = rank
        if rank <= TOP:
            self._ranking_table.native.selectRow(rank - 1)
        boxes = self._step_boxes(result, patch)
        outlines = self._show_step_outlines(boxes, patch)
        self._viewer.fit_to_view(layers=[outlines], margin=0.08)  # the patch in the middle
        caption_overlay(self._viewer,
                        f"student 5x  ·  rank {rank}: cosine {patch.cosine:.3f}  ·  teacher 20x")
        self.legend.show_layers([*self._shown, outlines])
        path, mpp = self._slide_source(result)

        def work(*, progress: Any, cancel: Any) -> PatchViews:
            if path is None:  # no slide layer of it: the comparison's own slide file
                return disagreement_views(result, None, rank)
            with Slide(path, mpp=mpp) as slide:
                return disagreement_views(result, slide, rank)

        started = self.views_task.start(
            work, message=f"{self._scores(rank)}\nReading what each model saw...",
            on_done=lambda views: self._on_views(views, boxes),
        )
        _scroll_to(self._step_status)  # the step's scores and Previous / Next, not the run's form
        return started

    def _on_views(self, views: PatchViews, boxes: dict[str, np.ndarray]) -> None:
        if views.patch.rank != self.rank:  # stepped on meanwhile (a click on the table)
            return
        self.views = views
        student = self._show_picture("student view", views.student, boxes["student"],
                                     f"student saw · 5x · {views.student_mpp:g} µm/px")
        self._show_picture("teacher mosaic", views.mosaic, boxes["teacher"],
                                    f"teacher saw · 20x, 16 crops · {views.teacher_mpp:g} µm/px")
        outlines = self._owned("disagreement outlines")
        if outlines is not None:  # the outlines over the pictures, framed again (the dock may have
            # resized the canvas since the step)
            self._viewer.layers.move(self._viewer.layers.index(outlines), len(self._viewer.layers))
            self._viewer.fit_to_view(layers=[outlines], margin=0.08)
        slide = self._slide_for(self.result) if self.result is not None else None
        self._viewer.layers.selection.active = slide if slide is not None else student
        self._step_status.value = self._scores(views.patch.rank)
        _scroll_to(self._step_status)

    def _scores(self, rank: int) -> str:
        """The dock's line on the patch at ``rank``: where it is, its cosine, its cluster's."""
        if self.result is None or not 1 <= rank <= len(self.ranking):
            return ""
        p, r = self.ranking[rank - 1], self.result
        text = (f"Rank {rank} of {len(self.ranking)}: patch {p.patch} at x={p.x}, y={p.y} px (level 0);"
                f" cosine {p.cosine:.3f} ({r.mapping}), slide mean {_cos(r.report['cosine'].get('mean'))}")
        if self.clusters is not None:
            c = self.clusters.row(p.cluster)
            text += f"; {c.name}: mean {_cos(c.mean)} over {c.scored} scored"
        return text + "."

    def _step_boxes(self, result: compare.ComparisonResult, patch: RankedPatch) -> dict[str, np.ndarray]:
        """World µm boxes (x0, y0, x1, y1) of the patch on the slide, of the student's picture to
        its left, the teacher's mosaic to its right, and of the 16 crops on the mosaic."""
        slide = self._slide_for(result)
        if slide is None:
            mpp = (float(result.report["slide_mpp"]),) * 2
            translate = (0.0, 0.0)
        else:
            mpp = (float(slide.scale[-1]), float(slide.scale[-2]))
            translate = (float(slide.translate[-1]), float(slide.translate[-2]))
        size0 = result.patch_size_level0
        box = level0_to_um([patch.x, patch.y, patch.x + size0, patch.y + size0], mpp, translate)
        width = box[2] - box[0]
        gap = VIEW_GAP * width
        left = box - np.array([width + gap, 0, width + gap, 0])
        right = box + np.array([width + gap, 0, width + gap, 0])
        n = math.isqrt(len(patch.crops))
        step = np.array([(right[2] - right[0]) / n, (right[3] - right[1]) / n])
        crops = np.array([[right[0] + c * step[0], right[1] + r * step[1],
                           right[0] + (c + 1) * step[0], right[1] + (r + 1) * step[1]]
                          for r in range(n) for c in range(n)])
        return {"patch": box, "student": left, "teacher": right, "crops": crops}

    def _show_step_outlines(self, boxes: dict[str, np.ndarray], patch: RankedPatch) -> Any:
        """The patch's edge on the slide and the edges of the two pictures (no text: the legend
        and the overlay say what they are)."""
        from napari_xmag.magnification import rectangles

        width = boxes["patch"][2] - boxes["patch"][0]
        px = width / 224  # µm per pixel of a 224 px picture of the patch
        rects = [boxes["student"], boxes["patch"], boxes["teacher"], *boxes["crops"]]
        colours = [STUDENT_COLOUR, PATCH_COLOUR, TEACHER_COLOUR] + [TEACHER_COLOUR] * len(boxes["crops"])
        labels = ["5x: what the student saw", f"rank {patch.rank} on the slide",
                  "20x: the teacher's 16 crops"] + [""] * len(boxes["crops"])
        style = {"edge_color": colours, "edge_width": [3 * px] * 3 + [1 * px] * len(boxes["crops"]),
                 "face_color": "transparent"}
        layer = self._owned("disagreement outlines")
        data = list(rectangles(np.array(rects)))
        if layer is None:
            return self._viewer.add_shapes(
                data, shape_type="rectangle", name="disagreement: patch, 5x, 20x crops",
                features={"label": labels}, units=("um", "um"),
                metadata={ROLE: "disagreement outlines"}, **style,
            )
        layer.selected_data = set(range(layer.nshapes))
        layer.remove_selected()
        layer.add_rectangles(data, **style)
        layer.features = {"label": labels}
        return layer

    def _show_picture(self, role: str, image: np.ndarray, box: np.ndarray, name: str) -> Any:
        """An RGB picture filling a world box (x0, y0, x1, y1): its physical size on the slide."""
        rows, cols = image.shape[:2]
        scale = ((box[3] - box[1]) / rows, (box[2] - box[0]) / cols)
        translate = (box[1] + scale[0] / 2, box[0] + scale[1] / 2)  # pixel centres, as the slide's
        layer = self._owned(role)
        if layer is None:
            return self._viewer.add_image(image, name=name, rgb=True, scale=scale, translate=translate,
                                          units=("um", "um"), metadata={ROLE: role},
                                          interpolation2d="nearest", contrast_limits=(0, 255))
        layer.data, layer.scale, layer.translate, layer.name = image, scale, translate, name
        return layer

    def _slide_source(self, result: compare.ComparisonResult) -> tuple[str | None, float | None]:
        """The slide file to read the pictures from (the layer's, with its mpp override), or
        None for the one the comparison names."""
        layer = self._slide_for(result)
        return slide_info(layer) if layer is not None else (None, None)

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

    def _show_labels(self, side: str, raster: np.ndarray, cos: Any, offset: tuple[float, float],
                     name: str, colors: list[list[int]], random: bool) -> Any:
        """A cluster panel: labels on the cosine map's grid, ending with the slide as every map does."""
        meta = {**cos.metadata, "kind": "labels", "classes": maps.cluster_names(len(colors)),
                "colors": colors, "weights_random": random,
                "values": f"{side} k-means cluster of each 5x patch", "units": ""}
        data, kw, _ = maps.SlideMap(raster.astype(np.int32), cos.scale, cos.translate, "labels", name, meta,
                                    cos.grid).layer_data()
        role = f"{side} clusters"
        layer = self._owned(role)
        if layer is not None:
            self._viewer.layers.remove(layer)
        kw.update(translate=tuple(np.add(kw["translate"], offset)), opacity=0.6,
                  metadata={**kw["metadata"], ROLE: role, "weights_random": random})
        return self._viewer.add_labels(data, **kw)


def _table(max_height: int) -> Table:
    table = Table()
    table.read_only = True
    table.native.setMaximumHeight(max_height)  # it scrolls
    table.native.verticalHeader().setVisible(False)  # the rank (or order) is a column of its own
    return table


def _scroll_to(widget: Any) -> None:
    """Scroll the dock (the scroll area around its body) until ``widget`` is in view."""
    from qtpy.QtWidgets import QScrollArea

    area = widget.native.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    if area is not None:
        area.ensureWidgetVisible(widget.native, 0, 8)


def _cos(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _colour_column(table: Table, column: int, colors: list[list[int] | None]) -> None:
    """Each cell of ``column`` on its cluster's colour (as in the clusters panel), text legible."""
    from qtpy.QtGui import QBrush, QColor

    for row, rgb in enumerate(colors):
        item = table.native.item(row, column)
        if item is None or rgb is None:
            continue
        item.setBackground(QBrush(QColor(*rgb)))
        light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140
        item.setForeground(QBrush(QColor(0, 0, 0) if light else QColor(255, 255, 255)))
