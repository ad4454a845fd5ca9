"""Where the student disagrees: the ranking, the cluster table and map, the pictures, the CSVs,
on a comparison made by hand with known cosines (NaN: not scored) and a tie."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from cases import CMU1
from comparisons import hand_result
from napari_xmag._atomic import OutputExistsError
from napari_xmag.compare import (
    CLUSTERS_NAME,
    RANKING_NAME,
    check_comparison_folder,
    cluster_agreement,
    disagreement_ranking,
    disagreement_views,
    read_comparison,
    report_rows,
    write_comparison,
)
from napari_xmag.compare.tables import cluster_rows, weakest_cluster
from napari_xmag.maps import kmeans_labels
from napari_xmag.slide import Slide

NAN = math.nan
# patch:     0        1         2         3           4            5            6
COORDS = [(0, 0), (898, 0), (0, 898), (898, 898), (898, 1796), (898, 2694), (0, 1796)]
COSINE = [0.5, NAN, 0.2, 0.5, 0.9, -0.1, NAN]
CLUSTERS = [1, 1, 2, 2, 3, 3, 4]
# lowest first; patches 0 and 3 tie at 0.5 and keep their order; 1 and 6 were not scored
ORDER = [5, 2, 0, 3, 4]


@pytest.fixture
def result(tmp_path):
    return hand_result(tmp_path / "cmp", COORDS, COSINE, CLUSTERS)


def f32(v: float) -> float:
    return float(np.float32(v))


def test_ranking_by_hand(result) -> None:
    ranking = disagreement_ranking(result)
    assert [p.patch for p in ranking] == ORDER
    assert [p.rank for p in ranking] == [1, 2, 3, 4, 5]
    assert [p.cosine for p in ranking] == [f32(COSINE[i]) for i in ORDER]
    assert [(p.x, p.y) for p in ranking] == [COORDS[i] for i in ORDER]
    assert [p.cluster for p in ranking] == [CLUSTERS[i] for i in ORDER]
    first = ranking[0]  # patch 5 at (898, 2694): its 16 crops, row-major
    offsets = (0, 224, 449, 673)
    assert first.crops == tuple((898 + c, 2694 + r) for r in offsets for c in offsets)
    assert [p.patch for p in disagreement_ranking(result, top=2)] == ORDER[:2]
    assert disagreement_ranking(result, top=0) == []
    with pytest.raises(ValueError, match="top"):
        disagreement_ranking(result, top=-1)


def test_cluster_table_by_hand(result) -> None:
    agreement = cluster_agreement(result)
    rows = agreement.rows
    assert [r.cluster for r in rows] == [2, 3, 1, 4]  # weakest first; no scored patch last
    assert [r.name for r in rows] == ["cluster 2", "cluster 3", "cluster 1", "cluster 4"]
    assert [(r.patches, r.scored) for r in rows] == [(2, 2), (2, 2), (2, 1), (1, 0)]
    c2, c3, c1, c4 = rows
    assert c2.mean == pytest.approx((0.2 + 0.5) / 2) and c2.median == pytest.approx(0.35)
    assert c2.lowest == f32(0.2)
    assert c3.mean == pytest.approx(0.4) and c3.lowest == f32(-0.1)
    assert c1.mean == c1.median == c1.lowest == f32(0.5)
    assert math.isnan(c4.mean) and math.isnan(c4.median) and math.isnan(c4.lowest)
    assert [r.share for r in rows] == pytest.approx([2 / 7, 2 / 7, 2 / 7, 1 / 7])
    assert agreement.weakest is c2 and agreement.k == 4
    np.testing.assert_array_equal(agreement.labels, CLUSTERS)

    # the map: every patch painted with its cluster's mean (unscored patch 1 too), NaN for cluster 4
    smap = agreement.map
    assert smap.kind == "cosine" and smap.name == "cluster agreement (k=4) · CMU-1-Small-Region"
    rows_, cols = smap.grid.cells(result.coords)
    expected = [c1.mean, c1.mean, c2.mean, c2.mean, c3.mean, c3.mean, NAN]
    np.testing.assert_allclose(smap.data[rows_, cols], expected, equal_nan=True)
    assert np.isnan(smap.data).sum() == smap.data.size - 6  # only the six clustered, scored cells


def test_weakest_cluster_in_the_report_rows(result) -> None:
    weakest = weakest_cluster(cluster_rows(result.cosine, result.scored, result.student_clusters))
    assert weakest is not None and weakest["cluster"] == 2 and weakest["scored"] == 2
    report = {**result.report, "weakest_cluster": weakest}
    row = report_rows(report)["weakest cluster"]
    assert row == "cluster 2: mean cosine 0.350 (2 of its 2 patches scored; 29% of the patches)"
    assert "weakest cluster" not in report_rows(result.report)  # older reports: no row
    # one scored cluster only: nothing to be weakest against
    assert weakest_cluster(cluster_rows(np.array([0.1, NAN]), None, np.array([1, 2]))) is None


def test_cluster_agreement_refits_only_for_another_k(tmp_path) -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (4, 4)), rng.normal(5, 0.1, (3, 4))])
    result = hand_result(tmp_path, COORDS, COSINE, CLUSTERS, features=features)
    for k in (None, 4, 8):  # the comparison's K, and the K it was asked for (capped at N)
        np.testing.assert_array_equal(cluster_agreement(result, k).labels, CLUSTERS)
    refit = cluster_agreement(result, k=2)
    np.testing.assert_array_equal(refit.labels, kmeans_labels(features, 2, 0))
    assert refit.k == 2 and sorted(r.patches for r in refit.rows) == [3, 4]


def test_views_are_the_slide_read_as_the_comparison_did(result) -> None:
    with Slide(CMU1.path) as slide:
        for rank in (1, 3):
            views = disagreement_views(result, slide, rank)
            patch = views.patch
            assert patch.patch == ORDER[rank - 1] and patch.rank == rank
            direct = slide.read_region(patch.x, patch.y, 224, mpp=2.0).image
            assert views.student.shape == (224, 224, 3) and views.student.dtype == np.uint8
            np.testing.assert_array_equal(views.student, direct)
            crops = np.stack([slide.read_region(x, y, 224, mpp=0.5).image for x, y in patch.crops])
            assert views.crops.shape == (16, 224, 224, 3)
            np.testing.assert_array_equal(views.crops, crops)
            mosaic = views.mosaic
            assert mosaic.shape == (896, 896, 3) and views.crops_per_side == 4
            for k in range(16):  # crop k at row k // 4, column k % 4
                r, c = divmod(k, 4)
                np.testing.assert_array_equal(mosaic[r * 224:(r + 1) * 224, c * 224:(c + 1) * 224], crops[k])
    assert (views.student_mpp, views.teacher_mpp) == (2.0, 0.5)
    # the comparison's own slide when none is given; the same pixels from a written folder
    write_comparison(result)
    again = disagreement_views(result.out_dir, rank=3)
    np.testing.assert_array_equal(again.crops, views.crops)
    np.testing.assert_array_equal(disagreement_views(result, CMU1.path, 3).student, views.student)
    with pytest.raises(ValueError, match="rank 6 is not between 1 and 5"):
        disagreement_views(result, rank=6)


def _csv(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_csvs_written_with_the_comparison(result) -> None:
    out = write_comparison(result)
    ranking = _csv(out / RANKING_NAME)
    header = ranking[0]
    assert header[:6] == ["rank", "patch", "x", "y", "cosine", "cluster"]
    assert header[6:8] == ["crop0_x", "crop0_y"] and header[-1] == "crop15_y" and len(header) == 38
    assert [int(r[1]) for r in ranking[1:]] == ORDER
    assert [float(r[4]) for r in ranking[1:]] == [f32(COSINE[i]) for i in ORDER]  # exact
    first = ranking[1]
    assert first[:4] == ["1", "5", "898", "2694"] and first[5] == "3" and first[6:10] == ["898", "2694",
                                                                                           "1122", "2694"]
    clusters = _csv(out / CLUSTERS_NAME)
    assert clusters[0] == ["cluster", "name", "patches", "scored", "mean_cosine", "median_cosine",
                           "min_cosine", "share"]
    assert [r[0] for r in clusters[1:]] == ["2", "3", "1", "4"]
    assert float(clusters[1][4]) == pytest.approx(0.35) and clusters[1][1] == "cluster 2"
    assert clusters[4][4:7] == ["", "", ""]  # cluster 4: no scored patch
    assert sorted(p.name for p in out.iterdir()) == ["clusters.csv", "compare.h5", "disagreement.csv",
                                                     "report.json"]
    before = (out / RANKING_NAME).read_text()
    write_comparison(result)  # ours: replaced without being asked
    assert (out / RANKING_NAME).read_text() == before
    assert [int(r[1]) for r in _csv(out / RANKING_NAME)[1:]] == [p.patch for p in
                                                               disagreement_ranking(read_comparison(out))]


@pytest.mark.parametrize("name", [RANKING_NAME, CLUSTERS_NAME])
def test_foreign_csv_refused_before_anything_is_written(result, name) -> None:
    out = result.out_dir
    out.mkdir(parents=True)
    (out / name).write_text("my notes,on these patches\n1,2\n")
    with pytest.raises(OutputExistsError, match=name):
        check_comparison_folder(out)
    with pytest.raises(OutputExistsError, match=f"{name}: exists and is not a napari-xmag comparison"):
        write_comparison(result)
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written, nothing touched
    assert (out / name).read_text().startswith("my notes")
    write_comparison(result, overwrite=True)
    assert _csv(out / name)[0][0] in ("rank", "cluster")


def test_views_of_a_stain_normalised_comparison_are_normalised(result) -> None:
    """A comparison run with --stain-norm showed both models normalised pixels: so do its views."""
    from dataclasses import replace

    from napari_xmag.stain import fit_stain_normalizer

    normed = replace(result, report={**result.report, "stain_norm": "macenko", "stain_reference": "default"})
    views = disagreement_views(normed, CMU1.path, 1)
    with Slide(CMU1.path) as slide:
        normalizer = fit_stain_normalizer(slide, "macenko")
        assert normalizer is not None
        patch = views.patch
        raw = slide.read_region(patch.x, patch.y, 224, mpp=2.0).image
        crops = np.stack([slide.read_region(x, y, 224, mpp=0.5).image for x, y in patch.crops])
    np.testing.assert_array_equal(views.student, normalizer(raw[None])[0])
    np.testing.assert_array_equal(views.crops, normalizer(crops))
    assert not np.array_equal(views.student, raw)
