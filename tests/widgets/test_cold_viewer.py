"""A fresh interpreter, a shown viewer first, every dock of the manifest, each widget's action:
napari must not die on a signal (the triton/LLVM crash), and what the widgets show must stay
legible at napari's reset view and at 4x zoom (captions are never canvas text; the overlay fits),
the disagreement step also as it frames the patch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert session["disagreement"]["status"].startswith("Rank 1 of"), session["disagreement"]["status"]
    assert "Select a row to go there" in session["search"]["status"], session["search"]["status"]


def test_disagreement_step_shows_what_each_model_saw(session) -> None:
    step = session["disagreement"]
    assert step["stepped"] and step["rank"] == step["views_rank"] == 1, step
    assert {"student view", "teacher mosaic", "disagreement outlines"} <= set(step["roles"]), step["roles"]
    # the mosaic is the 16 crops read at the teacher's µm/px, in their places
    assert step["teacher_mpp"][0] == step["teacher_mpp"][1] == 0.5, step["teacher_mpp"]
    assert step["crops"] == 16 and step["mosaic_shape"] == [896, 896, 3], step
    assert step["mosaic_equal"], step
    # rank 1: the lowest cosine of the scored patches
    assert step["ranked"] == step["scored"] >= 1, step
    rank, cosine = step["first_row"]
    assert rank == 1 and cosine == pytest.approx(step["lowest_cosine"], abs=5e-4), step
    assert all(step["in_view"].values()), step["in_view"]


def test_search_heatmap_hits_and_going_there(session) -> None:
    found = session["search"]
    assert found["heatmaps"] == 1, found
    lo, hi = found["heat_range"]
    assert -1 - 1e-6 <= lo <= hi <= 1 + 1e-6, found["heat_range"]
    # the query patch is the most like itself: cosine 1, the highest of the slide
    assert found["query_index"] == [found["patch"]], found
    assert found["score_at_query"] == pytest.approx(1.0, abs=1e-5), found
    assert found["scores_max"][0] == pytest.approx(1.0, abs=1e-5), found
    assert found["heat_best"] == pytest.approx(1.0, abs=1e-5), found
    assert all(score == pytest.approx(1.0, abs=1e-5) for score in found["hit_at_query"]), found
    assert found["hits_max"] <= 1 + 1e-5, found
    assert found["columns"] == ["slide", "x", "y", "score"] and found["rows"] >= 2, found
    # a selected row centres the view on its patch
    assert not np.allclose(found["camera_before"], found["hit_centre"], atol=1.0), found
    np.testing.assert_allclose(found["camera"], found["hit_centre"], atol=1.0)
    assert "cosine" in found["went"], found["went"]


STEPS = ["live", "inference", "explorer", "comparison", "disagreement", "probe", "search"]


@pytest.mark.parametrize("step", STEPS)
def test_captions_hold_at_reset_view_and_zoom(session, step) -> None:
    # step: as it framed it; live: mid-run, at the reset view
    views = {"step", "reset"} if step == "disagreement" else {"reset"} if step == "live" else {
        "reset", "zoom4"}
    assert set(session[step]["views"]) == views, session[step]["views"]
    for view, found in session[step]["views"].items():
        assert found["canvas_text"] == {}, (step, view, found["canvas_text"])
        assert found["overlay_px"] <= found["canvas_px"], (step, view, found)
        assert (session["out"] / f"{'widget-' if step != 'explorer' else ''}{step}-{view}.png").is_file()


def test_layer_names_stay_apart_and_say_random(session) -> None:
    names = [layer["name"] for layer in session["layers"]]
    for step in {layer["step"] for layer in session["layers"]}:  # the layers on the canvas together
        heads = [layer["name"][:18] for layer in session["layers"] if layer["step"] == step]
        assert len(set(heads)) == len(heads), heads
    for layer in session["layers"]:
        if layer["random"]:
            assert layer["name"].endswith(" · random weights"), layer["name"]
    # PCA, k-means, grid; cosine, two cluster maps; two probe heatmaps and its classes; similarity
    assert sum(layer["random"] for layer in session["layers"]) >= 10, session["layers"]
    for name in ("query point", "disagreement: patch, 5x, 20x crops"):
        assert name in names, names  # the new steps' layers are under the same checks
    similarity = [name for name in names if name.startswith("similarity · ")]
    assert similarity and all(name.endswith(" · random weights") for name in similarity), names


def test_live_maps_fill_in_then_resume(session) -> None:
    live = session["live"]
    first, *rest = live["updates"]
    # the patch grid at once, then the done mask and the live PCA, then Cancel keeps what is done
    assert first["done"] == 0 and not first["pca"], live["updates"]
    assert any(update["pca"] for update in rest), live["updates"]
    assert "kept" in live["status"] and "resume" in live["status"], live["status"]
    assert {"live-progress", "live-pca"} <= set(live["roles"]), live["roles"]
    kept = live["updates"][-1]["done"]
    # the next run starts from what was kept and ends with every patch, the live layers replaced
    assert live["resumed"][0]["done"] == kept > 0 and live["resumed"][-1]["done"] == first["total"]
