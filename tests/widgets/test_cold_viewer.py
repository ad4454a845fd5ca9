"""A fresh interpreter, a shown viewer first, every dock of the manifest, each widget's action:
napari must not die on a signal (the triton/LLVM crash), and what the widgets show must stay
legible at napari's reset view and at 4x zoom (captions are never canvas text; the overlay fits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cases import CMU1

SCRIPT = Path(__file__).with_name("cold_viewer.py")


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cold")
    env = {**os.environ, "XMAG_MODELS": "tiny-random", "XMAG_CACHE_DIR": str(out / "cache")}
    run = subprocess.run([sys.executable, str(SCRIPT), str(CMU1.path), str(out)], env=env,
                         capture_output=True, text=True, timeout=900)
    tail = (run.stdout + run.stderr)[-3000:]
    # a negative status is a signal: -11 was the segfault of triton's LLVM beside Mesa's
    assert run.returncode == 0, f"exit {run.returncode}:\n{tail}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    report["out"] = out
    return report


def test_docks_fit_the_screen(session) -> None:
    width, height = session["window"]
    assert (width, height) == (1600, 1000), session["window"]  # no dock made the window grow
    assert session["canvas"][0] >= 800, session["canvas"]
    for name, (w, _) in session["docks"].items():
        assert w <= 450, (name, w)  # beside the canvas, never wider than it


def test_every_action_ran(session) -> None:
    assert session["inference"]["status"].startswith("embedded:"), session["inference"]["status"]
    assert "40x: enlarged from 20x scan" in session["explorer"]["status"], session["explorer"]["status"]
    assert "cosine" in session["comparison"]["status"], session["comparison"]["status"]
    assert session["probe"]["status"].startswith("probe trained on"), session["probe"]["status"]


@pytest.mark.parametrize("step", ["inference", "explorer", "comparison", "probe"])
def test_captions_hold_at_reset_view_and_zoom(session, step) -> None:
    for view, found in session[step]["views"].items():
        assert found["canvas_text"] == {}, (step, view, found["canvas_text"])
        assert found["overlay_px"] <= found["canvas_px"], (step, view, found)
        assert (session["out"] / f"{'widget-' if step != 'explorer' else ''}{step}-{view}.png").is_file()


def test_layer_names_stay_apart_and_say_random(session) -> None:
    names = [layer["name"] for layer in session["layers"]]
    heads = [name[:18] for name in names]
    assert len(set(heads)) == len(heads), names
    for layer in session["layers"]:
        if layer["random"]:
            assert layer["name"].endswith(" · random weights"), layer["name"]
    # PCA, k-means, grid; cosine, two cluster maps; two probe heatmaps and its classes
    assert sum(layer["random"] for layer in session["layers"]) >= 9, session["layers"]
