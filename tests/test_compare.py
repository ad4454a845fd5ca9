"""The comparison core: geometry, embeddings, cosine by head and by ridge, CKA, ARI, files, CLI."""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
import torch

from conftest import BOXES, CMU1
from napari_xmag.cli import main
from napari_xmag.compare import (
    ComparisonFileError,
    RoiError,
    adjusted_rand,
    compare_slide,
    cosine_rows,
    linear_cka,
    parse_roi,
    read_comparison,
    ridge_map,
    spatial_split,
)
from napari_xmag.compare.run import _choose_mapping
from napari_xmag.embed import EmbedCancelled
from napari_xmag.maps import kmeans_labels
from napari_xmag.models import create_model, save_model
from napari_xmag.slide import MissingMppError, Slide
from napari_xmag.tiling import NoTissueError

# CMU-1 at 0.499 µm/px: a 5x patch is 224 * 2.0 / 0.499 = 897.8 level-0 px and the grid steps
# round(224 * 4.008) = 898 px on level 0; a 20x crop is 224.45 px, rounded to 0, 224, 449, 673.
STEP = 898
CROP_OFFSETS = (0, 224, 449, 673)
# The 5x patches of CMU-1 with >= 25% tissue: the middle column.
TISSUE_COORDS = [[898, 0], [898, 898], [898, 1796], [898, 2694]]
KW = {"progress": False, "device": "cpu", "batch_size": 8, "workers": 1}


@pytest.fixture(scope="module")
def student():
    return create_model("xmag", weights="random", tiny=True)


@pytest.fixture(scope="module")
def teacher():
    return create_model("uni2-h", weights="random", tiny=True)


@pytest.fixture(scope="module")
def whole(student, teacher, tmp_path_factory):
    """The whole of CMU-1 (4 patches, 64 crops), with the progress calls it made."""
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("whole")
    kw = {**KW, "progress": lambda d, t: calls.append((d, t))}
    result = compare_slide(CMU1.path, student, teacher, out, **kw)
    return result, calls


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


# ---- the cosine: ridge and head ------------------------------------------------------------
def test_ridge_fits_one_split_and_scores_the_other(whole) -> None:
    result, _ = whole
    s, t = result.student_features, result.teacher_features
    held, block = spatial_split(result.coords, STEP)
    assert block == 2 and held.tolist() == [False, False, True, True]
    assert result.report["mapping"] == "ridge"
    assert result.scored.tolist() == held.tolist()
    assert np.isnan(result.cosine[~held]).all()
    # Refit on the training rows only: the held-out teacher rows must not matter.
    noisy = t.copy()
    noisy[held] = np.random.default_rng(0).normal(size=noisy[held].shape)
    predicted, alpha = ridge_map(s, noisy, ~held)
    np.testing.assert_allclose(result.cosine[held], cosine_rows(predicted, t)[held], rtol=1e-5)
    ridge = result.report["ridge"]
    assert (ridge["train"], ridge["held_out"], ridge["alpha"], ridge["alpha_by"]) == (2, 2, alpha, "fixed")
    assert result.report["cosine"]["scored"] == 2


def test_ridge_map_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(20), np.arange(10)), -1).reshape(-1, 2) * 100
    student = rng.normal(size=(200, 16))
    teacher = student @ rng.normal(size=(16, 24)) + 0.01 * rng.normal(size=(200, 24))
    held, block = spatial_split(coords, 100)
    assert block == 4 and 0.4 < held.mean() < 0.6
    predicted, alpha = ridge_map(student, teacher, ~held)
    assert cosine_rows(predicted, teacher)[held].min() > 0.99
    assert alpha in np.logspace(-1, 5, 7)


def test_spatial_split() -> None:
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2) * 10
    held, block = spatial_split(coords, 10)
    assert block == 4 and held.sum() == 32
    cells = held.reshape(8, 8)  # [row, col]
    assert not cells[:4, :4].any() and cells[:4, 4:].all() and cells[4:, :4].all() and not cells[4:, 4:].any()
    with pytest.raises(ValueError, match="at least two patches"):
        spatial_split(coords[:1], 10)


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
    assert loaded.weights.heads == "random" and not loaded.weights.random
    assert _choose_mapping("auto", loaded, teacher) == "ridge"
    assert _choose_mapping("head", loaded, teacher) == "head"


# ---- CKA and ARI ---------------------------------------------------------------------------
def _cka_by_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from centred Gram matrices, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, m = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * m).sum() / np.sqrt((k * k).sum() * (m * m).sum()))


def test_linear_cka_properties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0)
    y = x @ rng.normal(size=(20, 30)) + rng.normal(size=(300, 30))
    assert linear_cka(x, y) == pytest.approx(_cka_by_hsic(x, y))
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    assert linear_cka(x, x * np.linspace(1, 10, 20)) < 0.99  # not invariant to anisotropic scaling
    independent = linear_cka(rng.normal(size=(5000, 10)), rng.normal(size=(5000, 12)))
    assert 0 <= independent < 0.02
    assert np.isnan(linear_cka(np.ones((5, 3)), x[:5]))


def test_ari_and_kmeans() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand(labels, labels) == 1.0
    assert adjusted_rand(labels, (labels + 1) % 3) == 1.0  # names do not matter
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.1, size=(20, 4)) for c in (0, 5, 10)])
    a, b = kmeans_labels(blobs, 3, seed=0), kmeans_labels(blobs, 3, seed=0)
    assert (a == b).all() and adjusted_rand(a, np.repeat([0, 1, 2], 20)) == 1.0


# ---- the files -----------------------------------------------------------------------------
def test_report_and_files(whole) -> None:
    result, _ = whole
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report == result.report
    assert report["slide"] == str(CMU1.path) and report["roi"] is None
    assert report["patches"] == {"student": 4, "teacher": 64}
    assert report["student"]["model"] == "xmag" and report["teacher"]["model"] == "uni2-h"
    assert report["student"]["weights"]["random"] and report["teacher"]["weights"]["source"] == "random"
    assert (report["student"]["mpp"], report["student"]["patch_size"]) == (2.0, 224)
    teacher = report["teacher"]
    assert (teacher["mpp"], teacher["crop_size"], teacher["crops_per_side"]) == (0.5, 224, 4)
    assert report["clusters"] == 4 and report["clusters_requested"] == 8  # K capped at N
    assert report["cka"] == pytest.approx(linear_cka(result.student_features, result.teacher_features))
    assert report["ari"] == pytest.approx(adjusted_rand(result.student_clusters, result.teacher_clusters))
    sec = report["seconds"]
    assert sec["student"] == pytest.approx(sec["tiling"] + sec["student_embed"], abs=2e-3)
    assert report["speedup"] == pytest.approx(sec["teacher"] / sec["student"], rel=1e-2)
    cos = result.cosine[result.scored]
    assert report["cosine"]["mean"] == pytest.approx(float(cos.mean()), rel=1e-6)
    assert report["cosine"]["min"] == pytest.approx(float(cos.min()), rel=1e-6)

    back = read_comparison(result.out_dir)
    assert back.report == report and back.mapping == "ridge"
    for name in ("coords", "crop_coords", "teacher_crop_features", "student_clusters", "scored"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    np.testing.assert_array_equal(back.cosine, result.cosine)  # NaN where not scored
    with h5py.File(result.out_dir / "compare.h5") as f:
        assert f["teacher_crop_features"].shape == (4, 16, 32)
        assert json.loads(f.attrs["report"]) == report
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["compare.h5", "report.json"]
    with pytest.raises(ComparisonFileError):
        read_comparison(result.out_dir / "nothing")


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
    with pytest.warns(UserWarning), pytest.raises(MissingMppError, match="--mpp-override"):
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
            "--device", "cpu", "--no-progress"]
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
