"""The comparison result: report and files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cases import CMU1
from napari_xmag.compare import (
    ComparisonFileError,
    adjusted_rand,
    linear_cka,
    matched_labels,
    read_comparison,
)
from napari_xmag.compare.tables import cluster_rows, weakest_cluster


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
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["clusters.csv", "compare.h5",
                                                                "disagreement.csv", "report.json"]
    weakest = weakest_cluster(cluster_rows(result.cosine, result.scored, result.student_clusters))
    assert report["weakest_cluster"] == weakest and weakest is not None  # 2 scored, in 2 clusters
    with pytest.raises(ComparisonFileError):
        read_comparison(result.out_dir / "nothing")


def test_matched_labels_rename_teacher_clusters_one_to_one() -> None:
    """Clusters are 1..K (0 is "no patch" in a label map): the teacher's are renamed to the
    student's they overlap most, one to one, and never to 0."""
    s = np.array([1, 1, 2, 2, 3])
    t = np.array([3, 3, 1, 1, 2])
    assert matched_labels(s, t).tolist() == s.tolist()
    # a teacher cluster the student never has (4 clusters against 3) keeps a label of its own, not 0
    s4, t4 = np.array([1, 1, 2, 3]), np.array([2, 2, 4, 1])
    renamed = matched_labels(s4, t4)
    assert renamed.tolist()[:2] == [1, 1] and renamed.min() >= 1 and len(set(renamed.tolist())) == 3
    assert matched_labels(np.array([0, 1]), np.array([0, 2])).tolist() == [0, 1]  # 0 stays 0


def test_maps_of_a_comparison_end_with_the_slide(whole) -> None:
    """CMU-1's last 5x patch row reaches past its edge: the cosine map is drawn at sub-cells and
    ends within half a sub-cell of the slide (as every map does, issue 12)."""
    from napari_xmag.compare import cosine_map

    result, _ = whole
    smap = cosine_map(result)
    assert smap.metadata["slide_size"] == list(result.report["slide_dimensions"])
    data, kw, _ = smap.layer_data()
    k = kw["metadata"]["xmag_map"]["display_subcells"]
    assert k > 1
    mpp = float(result.report["slide_mpp"])
    rows = np.flatnonzero(np.isfinite(data).any(axis=1))
    step_um = kw["scale"][0]
    bottom_um = kw["translate"][0] + (rows.max() + 0.5) * step_um  # the last drawn sub-cell's lower edge
    height_um = (result.report["slide_dimensions"][1] - 0.5) * mpp
    assert abs(bottom_um - height_um) <= step_um / 2 + 1e-6
