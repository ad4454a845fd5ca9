"""A new user's first session, in a fresh interpreter (run by test_cold_viewer.py, not by pytest).

Nothing is imported before the viewer: a shown 1600x1000 viewer comes first (its OpenGL
context exists), then every dock widget of the manifest, then CMU-1, then each widget's
action: *Embed and map* (tiny random model) with live maps, cancelled once the live PCA is
drawn and run again to resume, *Show magnifications*, the comparison on a
rectangle and its first step through *where the student disagrees*, the few-shot probe trained
on QuPath annotations opened from a GeoJSON, *Find similar* from a point on the embedded
tissue. After each, at napari's reset view and at 4x zoom (the disagreement step: as the step
framed it, and at the reset view), what the widget added is measured: canvas text (there
should be none), the overlay's width against the canvas; then its layers are recorded and
removed, as a user clears the canvas before the next task. Screenshots go to ``argv[2]`` (and
``XMAG_SCREENSHOT_DIR`` when set: docs/images).
Prints one JSON object on the last line; any crash shows as the exit status.

    python tests/widgets/cold_viewer.py SLIDE OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SCREEN = (1600, 1000)
NAMES_APART = 18  # characters napari's layer list shows of a name


def main(slide: str, out: Path) -> dict:
    import napari
    from qtpy.QtGui import QFont, QFontMetrics
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SCREEN)
    app = QApplication.instance()
    settle(app)

    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest("napari-xmag")
    docks = {}
    for contribution in manifest.contributions.widgets:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-xmag", contribution.display_name)
        docks[contribution.display_name] = (dock, widget)
    settle(app)
    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    report: dict = {  # all four stacked, as the Plugins menu adds them
        "window": [window.width(), window.height()],
        "canvas": [canvas.width(), canvas.height()],
        "docks": {name: [d.width(), d.height()] for name, (d, _) in docks.items()},
    }
    # then as tabs of one column, as a user arranges them; each raised when it is used
    first, *others = [dock for dock, _ in docks.values()]
    for dock in others:
        window.tabifyDockWidget(first, dock)

    [slide_layer] = viewer.open(slide, plugin="napari-xmag")
    report["layers"] = []

    def clear() -> None:
        """Record the step's layers (name, random weights?, which clearing), then remove all but the slide."""
        step = len({entry["step"] for entry in report["layers"]})
        for layer in list(viewer.layers):
            if layer is slide_layer:
                continue
            meta = layer.metadata
            random = bool((meta.get("xmag_map") or {}).get("weights_random") or meta.get("weights_random"))
            report["layers"].append({"name": layer.name, "random": random, "step": step})
            viewer.layers.remove(layer)
        text_overlay(viewer).visible = False

    from napari_xmag._widgets._common import camera, text_overlay

    shots = [d for d in (out, os.environ.get("XMAG_SCREENSHOT_DIR")) if d]

    def measure(step: str, views: tuple[str, ...] = ("reset", "zoom4")) -> dict:
        """Canvas text, and the overlay's width, at napari's reset view and at 4x zoom (``step``:
        the camera as the widget left it)."""
        from viewers import canvas_text

        found = {}
        for view in views:
            if view != "step":
                viewer.reset_view()
            if view == "zoom4":
                camera(viewer).zoom *= 4
            settle(app)
            overlay = text_overlay(viewer)
            font = QFont()
            font.setPointSizeF(float(overlay.font_size))
            width = QFontMetrics(font).horizontalAdvance(overlay.text) if overlay.visible else 0
            found[view] = {"canvas_text": canvas_text(viewer), "overlay_px": width,
                           "canvas_px": canvas.width()}
            save(viewer, app, shots, f"{step}-{view}.png")
        return found

    inference = raised(app, docks, "XMAG inference")
    inference._weights_edit.value = "random"
    inference._stride_edit.value = 56  # 72 patches: the live PCA (16 patches) comes before the end
    inference._out_edit.value = out / "features"
    inference._grid_edit.value = True
    inference._mask_edit.value = True
    report["live"] = live_maps(app, viewer, inference, lambda: measure("widget-live", ("reset",)))
    report["inference"] = {"status": inference._status.value, "views": measure("widget-inference")}
    features = next((out / "features").rglob("*.h5"))
    clear()

    explorer = raised(app, docks, "Magnification explorer")
    explorer._source_edit.value = "view centre"
    camera(viewer).center = (0, 1505 * 0.499, 1090 * 0.499)
    explorer._on_show()
    wait(app, explorer.task)
    report["explorer"] = {"status": explorer._status.value, "views": measure("explorer")}
    clear()

    comparison = raised(app, docks, "XMAG teacher comparison")
    comparison._weights_edit.value = "random"
    # level-0 x 898..1796, y 898..2694 at 0.499 µm/px: two 5x patches (tests/widgets/test_comparison.py)
    roi = viewer.add_shapes([[[448, 448], [448, 896], [1344, 896], [1344, 448]]], shape_type="rectangle",
                            name="roi", units=("um", "um"))
    comparison._roi_edit.value = roi
    comparison._out_edit.value = out / "comparison"
    comparison._on_run()
    wait(app, comparison.task)
    report["comparison"] = {"status": comparison._status.value, "views": measure("widget-comparison")}
    clear()
    # the whole slide compared by models whose random features differ from patch to patch
    # (layer scale 1, tests/conftest.py), loaded as a user opens an earlier comparison folder
    from napari_xmag.compare import compare_slide

    student, teacher = informative("xmag"), informative("uni2-h")
    compare_slide(slide, student, teacher, out / "comparison-slide", progress=False, device="cpu")
    comparison._out_edit.value = out / "comparison-slide"
    comparison._on_load()
    settle(app)
    report["disagreement"] = disagreement(app, viewer, comparison, slide_layer)
    report["disagreement"]["views"] = measure("widget-disagreement", ("step", "reset"))
    clear()

    from napari_xmag.features import read_features
    from qupath import qupath_geojson

    probe = raised(app, docks, "XMAG few-shot probe")
    annotations = out / "CMU-1 annotations.geojson"
    qupath_geojson(annotations, read_features(features))
    [shapes] = viewer.open(str(annotations), plugin="napari-xmag")
    probe._features_edit.value = features
    probe._annotations_edit.value = shapes
    probe._on_train()
    wait(app, probe.task)
    report["probe"] = {"status": probe._status.value, "views": measure("widget-probe")}
    clear()

    # features that differ from patch to patch (a tiny random model at layer scale 1): with the
    # default tiny model's 1e-5 layer scale every cosine is 1.0000 and the heatmap says nothing
    from napari_xmag.embed import EmbedSettings, embed_slide

    varied = embed_slide(slide, informative("xmag"), out / "features-varied", EmbedSettings(stride=112),
                         progress=False).output
    report["search"] = similar_tissue(app, viewer, raised(app, docks, "XMAG similar tissue"), slide_layer,
                                      varied)
    report["search"]["views"] = measure("widget-search")
    clear()
    viewer.close()
    return report


def informative(name: str):
    """A tiny random model whose layer scale is 1, so that its features differ between patches."""
    from napari_xmag.models import create_model

    return create_model(name, weights="random", tiny=True, overrides={"init_values": 1.0})


def live_maps(app, viewer, inference, measure) -> dict:
    """*Embed and map* with live maps: the updates as they arrive, Cancel once the live PCA is on
    the canvas (what is done stays there, and in the partial file), measured; then *Embed and
    map* again, which resumes from what was kept and ends with the final maps."""
    from napari_xmag._widgets.inference import ROLE

    show = inference._on_live
    runs: list[list[dict]] = [[], []]

    def record(run: int, layer, update) -> None:
        runs[run].append({"done": update.done, "total": update.total, "seconds": update.seconds,
                          "pca": update.pca is not None})
        show(layer, update)
        if run == 0 and update.pca is not None and update.done < update.total:
            inference.task.cancel()

    found: dict = {}
    from napari_xmag import embed

    reads = embed.iter_patch_batches

    def slowed(*args, **kwargs):  # reads as from a network drive, so Cancel lands mid-run
        for batch in reads(*args, **kwargs):
            time.sleep(0.4)
            yield batch

    for run in (0, 1):
        inference._on_live = lambda layer, update, run=run: record(run, layer, update)
        embed.iter_patch_batches = slowed if run == 0 else reads
        inference._on_run()
        wait(app, inference.task)
        if run == 0:
            found["status"] = inference._status.value
            found["roles"] = sorted(str(layer.metadata[ROLE]["role"]) for layer in viewer.layers
                                    if ROLE in layer.metadata)
            found["views"] = measure()
    inference._on_live, embed.iter_patch_batches = show, reads
    found["updates"], found["resumed"] = runs
    return found


def disagreement(app, viewer, comparison, slide_layer) -> dict:
    """*Next* after the comparison: rank 1, what each model saw of it, against the library's reading."""
    import numpy as np

    from napari_xmag._widgets.comparison import ROLE
    from napari_xmag.compare import disagreement_views

    stepped = comparison.show_rank(1)
    wait(app, comparison.views_task)
    result = comparison.result
    owned = {layer.metadata[ROLE]: layer for layer in viewer.layers if ROLE in layer.metadata}
    expected = disagreement_views(result, slide_layer.metadata["xmag"]["path"], rank=1)
    mosaic = owned.get("teacher mosaic")
    table = comparison._ranking_table.value
    scored = np.asarray(result.cosine)[np.asarray(result.scored, bool)]
    return {
        "stepped": bool(stepped), "rank": comparison.rank, "status": comparison._step_status.value,
        "roles": sorted(str(role) for role in owned),
        "ranked": len(comparison.ranking), "scored": int(scored.size),
        "teacher_mpp": [expected.teacher_mpp, float(result.report["teacher"]["mpp"])],
        "crops": len(expected.crops), "mosaic_shape": list(expected.mosaic.shape),
        "mosaic_equal": mosaic is not None and bool(np.array_equal(np.asarray(mosaic.data), expected.mosaic)),
        "first_row": [int(table["data"][0][0]), float(table["data"][0][3])] if table["data"] else None,
        "lowest_cosine": float(scored.min()) if scored.size else None,
        "views_rank": comparison.views.patch.rank if comparison.views is not None else None,
        # the dock scrolled to the step: its scores and Previous / Next are in view, not cut off
        "in_view": {name: not getattr(comparison, name).native.visibleRegion().isEmpty()
                    for name in ("_step_status", "_next_button")},
    }


def similar_tissue(app, viewer, widget, slide_layer, features: Path) -> dict:
    """*Find similar* from a point on a patch of the embedded tissue, over the features folder;
    then a row of the table selected, as a user goes to a hit."""
    import numpy as np

    from napari_xmag import search
    from napari_xmag._widgets._common import camera
    from napari_xmag._widgets.search import ROLE
    from napari_xmag.features import read_features

    fs = read_features(features)
    index = len(fs) // 2  # the mask kept tissue only: any patch is on tissue
    size0 = float(fs.coords_attrs["patch_size_level0_exact"])
    (mpp_y, mpp_x), (ty, tx) = slide_layer.scale[-2:], slide_layer.translate[-2:]

    def centre_um(x0: float, y0: float) -> list[float]:
        """World (y, x) µm of a patch's centre (level-0 pixel i centred at i * mpp)."""
        return [(y0 + size0 / 2 - 0.5) * mpp_y + ty, (x0 + size0 / 2 - 0.5) * mpp_x + tx]

    x0, y0 = (int(v) for v in fs.coords[index])
    points = viewer.add_points([centre_um(x0, y0)], name="query point", units=("um", "um"), size=40,
                               face_color="#00e5ff", border_color="black")
    widget._features_edit.value = features
    widget._query_edit.value = points
    widget._folder_edit.value = features.parent
    widget._on_search()
    wait(app, widget.task)
    query = search.query_from_region(features, x0 + size0 / 2, y0 + size0 / 2)
    scores = search.patch_similarity(features, query)
    heats = [layer for layer in viewer.layers
             if (layer.metadata.get(ROLE) or {}).get("role") == "similarity"]
    heat = np.asarray(heats[0].data, np.float64) if heats else np.array([np.nan])
    table = widget._table.value
    at_query = [h.score for h in widget.hits if (h.x, h.y) == (x0, y0)]
    status = widget._status.value
    before = [float(v) for v in camera(viewer).center[-2:]]
    row = min(1, len(widget.hits) - 1)  # the second hit: the view goes there
    widget._table.native.selectRow(row)
    settle(app)
    hit = widget.hits[row]
    return {
        "status": status, "went": widget._status.value, "heatmaps": len(heats),
        "heat_range": [float(np.nanmin(heat)), float(np.nanmax(heat))] if np.isfinite(heat).any() else None,
        "heat_best": float(heats[0].metadata["xmag_map"]["best"]) if heats else None,
        "query_index": query.source["index"], "patch": index,
        "scores_max": [float(scores.max()), int(np.argmax(scores))], "score_at_query": float(scores[index]),
        "rows": len(table["data"]), "columns": list(table["columns"]),
        "hit_at_query": at_query, "hits_max": max((h.score for h in widget.hits), default=None),
        "camera_before": before, "camera": [float(v) for v in camera(viewer).center[-2:]],
        "hit_centre": centre_um(hit.x, hit.y),
    }


def raised(app, docks: dict, name: str):
    dock, widget = docks[name]
    dock.raise_()
    settle(app)
    return widget


def settle(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def wait(app, task, timeout: float = 300.0) -> None:
    """Until a widget's background task ends, turning the event loop as napari would."""
    if not task.running:
        raise RuntimeError("the task did not start")
    end = time.monotonic() + timeout
    while task.running:
        if time.monotonic() > end:
            raise TimeoutError(f"{task.title} still running after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.01)
    settle(app)


def save(viewer, app, folders, name: str) -> None:
    from PIL import Image

    shot = viewer.screenshot(canvas_only=False, flash=False)
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot).save(Path(folder) / name)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: viewers.py
    result = main(sys.argv[1], Path(sys.argv[2]))
    print(json.dumps(result))
