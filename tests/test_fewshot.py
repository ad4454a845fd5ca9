"""Few-shot probes from painted patches: the truth, training, saving, picking patches, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xmag import fewshot
from two_tissues import MPP, PATCH, STROMA, TUMOUR, centres_um, chosen, painted


# ---- library ------------------------------------------------------------------------------
def test_truth_has_both_tissue_types(embedded) -> None:
    truth = embedded[3]
    counts = np.bincount(truth, minlength=3)
    assert counts[STROMA] >= 20 and counts[TUMOUR] >= 8, counts


def test_painted_patches_train_a_probe_that_finds_the_tumour(embedded) -> None:
    _, path, data, truth = embedded
    index = chosen(truth)
    labels = painted(data, truth, index)
    selection = fewshot.patches_under_labels(data, *labels)
    np.testing.assert_array_equal(np.sort(selection.index), np.sort(index))  # centre on a painted pixel
    result = fewshot.fewshot_probe(path, labels=labels)
    assert result.class_ids == [STROMA, TUMOUR] and result.training_accuracy == 1.0
    held = np.setdiff1d(np.flatnonzero(truth > 0), index)
    predicted = np.array([STROMA, TUMOUR])[result.probe.predict_proba(data.features[held]).argmax(1)]
    accuracy = float((predicted == truth[held]).mean())
    print(f"few-shot probe (4 + 4 painted patches): held-out accuracy {accuracy:.3f} on {len(held)} patches")
    assert accuracy >= 0.8, accuracy

    heat, seg = result.heatmaps, result.segmentation
    assert heat.data.shape[0] == 2 and seg.data.shape == heat.data.shape[1:]
    covered = np.isfinite(heat.data).all(axis=0)
    np.testing.assert_allclose(heat.data.sum(axis=0)[covered], 1.0, atol=1e-5)
    assert set(np.unique(seg.data)) <= {0, 1, 2}
    np.testing.assert_array_equal(seg.data > 0, covered)
    assert heat.metadata["features_path"] == str(path)


def test_save_and_load_give_the_same_maps(embedded, tmp_path) -> None:
    _, path, data, truth = embedded
    result = fewshot.fewshot_probe(path, labels=painted(data, truth, chosen(truth)))
    saved = fewshot.save_probe(result.probe, tmp_path / "probe.npz")
    heat, seg = fewshot.predict_maps(path, fewshot.load_probe(saved))
    np.testing.assert_array_equal(heat.data, result.heatmaps.data)
    np.testing.assert_array_equal(seg.data, result.segmentation.data)
    assert heat.classes == ["class 1", "class 2"]


def test_points_select_every_patch_that_holds_them(embedded) -> None:
    _, path, data, truth = embedded
    index = chosen(truth)
    points = centres_um(data, index)
    selection = fewshot.patches_under_points(data, points, truth[index])
    assert set(index) <= set(selection.index.tolist())
    for i, cls in zip(selection.index, selection.classes, strict=True):  # each holds a point of its class
        x0, y0 = (data.coords[i] - 0.5) * MPP
        inside = (points[:, 1] >= x0) & (points[:, 1] < x0 + PATCH * MPP) & (points[:, 0] >= y0) & (
            points[:, 0] < y0 + PATCH * MPP)
        assert set(truth[index][inside]) == {cls}
    result = fewshot.fewshot_probe(path, points=(points, truth[index]))
    assert result.class_ids == [1, 2]


def test_clear_errors(embedded, tmp_path) -> None:
    _, path, data, truth = embedded
    index = chosen(truth)
    one = truth[index] == STROMA
    with pytest.raises(fewshot.FewShotError, match="at least 2 classes"):
        fewshot.fewshot_probe(path, points=(centres_um(data, index[one]), truth[index][one]))
    with pytest.raises(fewshot.FewShotError, match="outside the slide"):
        fewshot.fewshot_probe(path, points=(centres_um(data, index) + 5000.0, truth[index]))
    raster, scale, _ = painted(data, truth, index)
    with pytest.raises(fewshot.FewShotError, match="outside the slide"):
        fewshot.fewshot_probe(path, labels=(raster, scale, (-10_000.0, -10_000.0)))
    with pytest.raises(fewshot.FewShotError, match="empty"):
        fewshot.fewshot_probe(path, labels=(np.zeros_like(raster), scale, (0.0, 0.0)))
    with pytest.raises(fewshot.FewShotError, match="inference widget"):
        fewshot.fewshot_probe(tmp_path / "nothing.h5", points=(centres_um(data, index), truth[index]))
