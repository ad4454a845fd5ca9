"""`xmag eval`: learns colour from slides, cannot learn random labels, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_xmag.cli import main
from napari_xmag.features import read_features
from napari_xmag.mil import (
    load_abmil,
    read_attention,
)


# ---- xmag eval on slides -------------------------------------------------------------------------
def test_eval_learns_colour_from_slides(colour_set, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    rc = main(["eval", "--csv", str(colour_set / "slides.csv"), "--features", str(colour_set / "features"),
               "--out", str(out), "--folds", "3", "--lr", "1e-3", "--epochs", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "probe: accuracy" in printed and "abmil: accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["pink", "purple"] and report["slides"] == 6
    probe, abmil = report["probe"], report["abmil"]
    assert probe["split"] == "slide"  # no slide in both train and test
    assert probe["summary"]["balanced_accuracy"]["mean"] >= 0.85 and probe["summary"]["auc"]["mean"] >= 0.9
    assert probe["slide_level"]["balanced_accuracy"] == 1.0
    assert abmil["summary"]["balanced_accuracy"]["mean"] >= 0.85
    assert sorted(p["fold"] for p in abmil["predictions"]) == [0, 0, 1, 1, 2, 2]
    for k in range(3):
        assert load_abmil(out / "abmil" / f"fold{k}.safetensors")[1] == ["pink", "purple"]
    # attention: one file per slide, the features file's patches, from the fold that held it out
    for prediction in abmil["predictions"]:
        att = read_attention(out / "attention" / f"{prediction['slide']}.h5")
        feats = read_features(colour_set / "features" / f"{prediction['slide']}.h5")
        np.testing.assert_array_equal(att.coords, feats.coords)
        assert att.attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert att.attrs["fold"] == prediction["fold"] and att.attrs["method"] == "abmil"
        assert att.attrs["classes"] == ["pink", "purple"] and att.attrs["label"] == prediction["label"]
        assert att.coords_attrs["patch_size_level0"] == feats.coords_attrs["patch_size_level0"]
        assert att.percentiles().max() == 1.0


def test_eval_cannot_learn_random_patch_labels(colour_set, tmp_path, capsys) -> None:
    out = tmp_path / "noise"
    rc = main(["eval", "--csv", str(colour_set / "random_patches.csv"), "--features",
               str(colour_set / "features"), "--out", str(out), "--folds", "3"])
    assert rc == 0
    assert "note: ABMIL skipped" in capsys.readouterr().out
    probe = json.loads((out / "report.json").read_text())["probe"]
    assert probe["n_samples"] == 6 * 36
    assert abs(probe["summary"]["balanced_accuracy"]["mean"] - 0.5) <= 0.15
    assert abs(probe["summary"]["auc"]["mean"] - 0.5) <= 0.15


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such labels file"),
        ("no-features", "1 slide(s) without a features file"),
        ("one-class", "one class only"),
        ("few-slides", "fewer than the 5 folds"),
        ("abmil-on-patches", "ABMIL needs one label per slide"),
        ("unknown-patch", "not in its features file"),
    ],
)
def test_eval_errors_are_one_line(case, message, colour_set, tmp_path, capsys) -> None:
    csv = tmp_path / "labels.csv"
    rows = {
        "no-features": "slide,label\ns0,pink\ns1,purple\ns2,pink\ns3,purple\nghost,pink\ns5,purple\n",
        "one-class": "slide,label\ns0,pink\ns2,pink\n",
        "few-slides": "slide,label\ns0,pink\ns1,purple\ns2,pink\ns3,purple\n",
        "abmil-on-patches": "slide,x,y,label\ns0,0,0,a\ns1,0,0,b\n",
        "unknown-patch": "slide,x,y,label\ns0,1,2,a\ns1,0,0,b\n",
    }
    if case in rows:
        csv.write_text(rows[case])
    folds = "3" if case == "no-features" else "5"
    method = "abmil" if case == "abmil-on-patches" else "both"
    rc = main(["eval", "--csv", str(csv), "--features", str(colour_set / "features"), "--out",
               str(tmp_path / "out"), "--folds", folds, "--method", method])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("xmag eval: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "report.json").exists()
