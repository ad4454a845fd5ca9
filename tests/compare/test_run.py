"""Comparing teacher and student on one slide: patches and crops by hand, features equal direct
forwards, heads, ROIs, the CLI."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from cases import BOXES, CMU1
from comparisons import KW
from napari_xmag.cli import main
from napari_xmag.compare import (
    RoiError,
    compare_slide,
    parse_roi,
    read_comparison,
)
from napari_xmag.compare.run import _choose_mapping
from napari_xmag.embed import EmbedCancelled
from napari_xmag.models import create_model, save_model
from napari_xmag.slide import MissingMppError, MissingMppWarning, Slide
from napari_xmag.tiling import NoTissueError

CROP_OFFSETS = (0, 224, 449, 673)
# The 5x patches of CMU-1 with >= 25% tissue: the middle column.
TISSUE_COORDS = [[898, 0], [898, 898], [898, 1796], [898, 2694]]


def _embed(model, images):
    with torch.inference_mode():
        return model.embed(np.stack(images)).numpy()


# ---- geometry and embeddings ---------------------------------------------------------------
def test_patches_and_crops_by_hand(whole) -> None:
    result, _ = whole
    assert result.coords.tolist() == TISSUE_COORDS
    assert (result.tissue >= 0.25).all()
    expected = [
        [[x + CROP_OFFSETS[c], y + CROP_OFFSETS[r]] for r in range(4) for c in range(4)]
        for x, y in TISSUE_COORDS
    ]
    assert result.crop_coords.tolist() == expected


def test_features_equal_direct_forwards(whole, student, teacher) -> None:
    result, _ = whole
    with Slide(CMU1.path) as slide:
        for i, (x, y) in enumerate(result.coords):
            patch = slide.read_region(int(x), int(y), 224, mpp=2.0).image
            direct = _embed(student, [patch])[0]
            np.testing.assert_allclose(result.student_features[i], direct, rtol=1e-4, atol=1e-5)
            crops = [slide.read_region(int(cx), int(cy), 224, mpp=0.5).image
                     for cx, cy in result.crop_coords[i]]
            direct = _embed(teacher, crops)
            np.testing.assert_allclose(result.teacher_crop_features[i], direct, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(result.teacher_features[i], direct.mean(0), rtol=1e-4, atol=1e-5)


def test_progress_counts_patches_then_crops(whole) -> None:
    _, calls = whole
    assert {t for _, t in calls} == {4 + 64}
    assert calls[-1] == (68, 68)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_pyramid_geometry(pyramid_path, student, teacher, tmp_path) -> None:
    # 0.5 µm/px with a 4x level: 5x patches are 896 px read from level 1, crops 224 px at level 0.
    result = compare_slide(pyramid_path, student, teacher, tmp_path, roi=(896, 896, 1792, 896),
                           tissue_threshold=0.0, mapping="ridge", **KW)
    assert result.coords.tolist() == [[896, 896], [1792, 896]]
    offsets = [[c * 224, r * 224] for r in range(4) for c in range(4)]
    assert result.crop_coords.tolist() == [(np.array(offsets) + xy).tolist() for xy in result.coords.tolist()]
    assert result.report["student"]["level"] == 1 and result.report["teacher"]["level"] == 0


def test_head_path(teacher, tmp_path) -> None:
    student = create_model("xmag", weights="random", tiny=True, heads=True)
    result = compare_slide(CMU1.path, student, teacher, tmp_path, roi=(898, 898, 898, 898), **KW)
    assert result.coords.tolist() == [[898, 898]] and result.report["mapping"] == "head"
    with Slide(CMU1.path) as slide:
        patch = slide.read_region(898, 898, 224, mpp=2.0).image
        crops = [slide.read_region(int(x), int(y), 224, mpp=0.5).image for x, y in result.crop_coords[0]]
    with torch.inference_mode():
        cls = student.embed(np.stack([patch]))  # xmag pools the class token
        mapped = student.heads["global"](cls)[0].numpy()
    target = _embed(teacher, crops).mean(0)
    expected = mapped @ target / np.linalg.norm(mapped) / np.linalg.norm(target)
    assert result.scored.all() and result.report["ridge"] is None
    assert result.cosine[0] == pytest.approx(expected, abs=1e-5)


def test_mapping_choice(student, teacher, tmp_path) -> None:
    assert _choose_mapping("auto", student, teacher) == "ridge"  # no head
    with pytest.raises(ValueError, match="no global distillation head"):
        _choose_mapping("head", student, teacher)
    # A fresh head on a trained (here: loaded from a file) backbone is noise: auto skips it.
    save_model(student, tmp_path / "m")
    loaded = create_model(tmp_path / "m", heads=True)
    assert loaded.weights.heads == "random" and loaded.weights.random  # saved from random: still random
    loaded.weights = dataclasses.replace(loaded.weights, random=False)  # as if the backbone were trained
    assert _choose_mapping("auto", loaded, teacher) == "ridge"
    assert _choose_mapping("head", loaded, teacher) == "head"


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("roi", "error", "message"),
    [
        ((3000, 0, 900, 900), RoiError, "outside the 2220 x 2967 px slide"),
        ((898, 898, 800, 2000), RoiError, "smaller than one 224 px patch"),
        ((900, 898, 900, 900), RoiError, "no whole patch"),
        ((1796, 0, 898, 898), NoTissueError, "holds 25% tissue"),
    ],
)
def test_roi_errors(roi, error, message, student, teacher, tmp_path) -> None:
    with pytest.raises(error, match=message) as info:
        compare_slide(CMU1.path, student, teacher, tmp_path / "out", roi=roi, **KW)
    assert str(CMU1.path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_no_mpp_and_cancel(student, teacher, tmp_path) -> None:
    with pytest.warns(MissingMppWarning), pytest.raises(MissingMppError, match="--mpp-override"):
        compare_slide(BOXES.path, student, teacher, tmp_path / "a", **KW)
    stop = threading.Event()
    stop.set()
    with pytest.raises(EmbedCancelled):
        compare_slide(CMU1.path, student, teacher, tmp_path / "b", cancel=stop, **KW)
    assert not (tmp_path / "b").exists()


def test_parse_roi() -> None:
    assert parse_roi("1, 2,3,4") == (1, 2, 3, 4)
    assert parse_roi(None) is None
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,10"):
        with pytest.raises(ValueError, match="ROI"):
            parse_roi(bad)


# ---- the command ---------------------------------------------------------------------------
def test_cli_compare(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")  # the documented switch: tiny random models
    out = tmp_path / "cmp"
    base = ["compare", str(CMU1.path), "--student", "xmag", "--teacher", "uni2-h",
            "--student-weights", "random", "--teacher-weights", "random",
            "--device", "cpu", "--precision", "fp32", "--no-progress"]
    assert main([*base, "--roi", "898,898,898,1796", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS (student)" in captured.err and "RANDOM WEIGHTS (teacher)" in captured.err
    assert "2 patches at 2 µm/px, 32 teacher crops at 0.5 µm/px" in captured.out
    assert "speed-up" in captured.out
    result = read_comparison(out)
    assert result.report["roi"] == [898, 898, 898, 1796]
    assert result.coords.tolist() == [[898, 898], [898, 1796]]
    assert result.report["mapping"] == "ridge" and result.report["cosine"]["scored"] == 1
    assert result.report["speedup"] > 0 and result.report["cka"] is not None

    assert main([*base, "--roi", "3000,0,900,900", "--out", str(tmp_path / "x")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("xmag compare: error:") and "outside" in errors[0]
    assert main([*base, "--roi", "1,2,3", "--out", str(tmp_path / "x")]) == 2


def test_stain_normalised_comparison_embeds_normalised_patches(student, teacher, tmp_path) -> None:
    """--stain-norm on compare: both models see the slide's normalised patches; the report says so."""
    from napari_xmag.stain import fit_stain_normalizer

    result = compare_slide(CMU1.path, student, teacher, tmp_path, stain_norm="reinhard", **KW)
    assert result.report["stain_norm"] == "reinhard" and result.report["stain_reference"] == "default"
    with Slide(CMU1.path) as slide:
        normalizer = fit_stain_normalizer(slide, "reinhard")
        assert normalizer is not None
        x, y = (int(v) for v in result.coords[0])
        patch = normalizer(slide.read_region(x, y, 224, mpp=2.0).image[None])
        direct = _embed(student, list(patch))[0]
        np.testing.assert_allclose(result.student_features[0], direct, rtol=1e-4, atol=1e-5)
        crops = normalizer(np.stack([slide.read_region(int(cx), int(cy), 224, mpp=0.5).image
                                     for cx, cy in result.crop_coords[0]]))
        np.testing.assert_allclose(result.teacher_crop_features[0], _embed(teacher, list(crops)), rtol=1e-4,
                                   atol=1e-5)
