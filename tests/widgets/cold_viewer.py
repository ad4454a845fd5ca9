"""A new user's first session, in a fresh interpreter (run by test_cold_viewer.py, not by pytest).

Nothing is imported before the viewer: a shown 1600x1000 viewer comes first (its OpenGL
context exists), then every dock widget of the manifest, then CMU-1, then each widget's
action: *Embed and map* (tiny random model), *Show magnifications*, the comparison on a
rectangle, the few-shot probe trained on QuPath annotations opened from a GeoJSON. After each,
at napari's reset view and at 4x zoom, what the widget added is measured: canvas text (there
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
        """Record the step's layers (name, random weights?), then remove all but the slide."""
        for layer in list(viewer.layers):
            if layer is slide_layer:
                continue
            meta = layer.metadata
            random = bool((meta.get("xmag_map") or {}).get("weights_random") or meta.get("weights_random"))
            report["layers"].append({"name": layer.name, "random": random})
            viewer.layers.remove(layer)
        text_overlay(viewer).visible = False

    from napari_xmag._widgets._common import camera, text_overlay

    shots = [d for d in (out, os.environ.get("XMAG_SCREENSHOT_DIR")) if d]

    def measure(step: str) -> dict:
        """Canvas text, and the overlay's width, at napari's reset view and at 4x zoom."""
        from viewers import canvas_text

        found = {}
        for view in ("reset", "zoom4"):
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
    inference._stride_edit.value = 112
    inference._out_edit.value = out / "features"
    inference._grid_edit.value = True
    inference._mask_edit.value = True
    inference._on_run()
    wait(app, inference.task)
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
    viewer.close()
    return report


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
