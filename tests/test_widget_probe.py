"""The few-shot probe: the library on a slide with known tissue types, the widget without clicking."""

from __future__ import annotations

import numpy as np
import pytest
import torch._dynamo  # noqa: F401

# torch, timm and torchvision (which loads triton) before any viewer exists: triton's bundled
# LLVM crashes when first loaded beside Mesa's llvmpipe (the software OpenGL of xvfb runs).
import napari_xmag.models  # noqa: F401
from conftest import save_screenshot
from napari_xmag import fewshot
from napari_xmag.features import read_features
from napari_xmag.synthetic import tissue_regions

WIDTH, HEIGHT, MPP = 2048, 1536, 0.5
PATCH = 224  # level-0 px (the sample slide is 20x, patches cut at 20x)
STROMA, TUMOUR = 1, 2


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The procedural sample slide embedded at 20x, stride 112, by a tiny random model whose
    features vary with the input (layer-scale gammas at 1, not DINOv2's 1e-5)."""
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model
    from napari_xmag.synthetic import write_sample_slide

    folder = tmp_path_factory.mktemp("probe")
    slide = write_sample_slide(folder / "sample.svs", WIDTH, HEIGHT)
    model = create_model("xmag", weights="random", tiny=True, overrides={"init_values": 1.0})
    settings = EmbedSettings(mpp=MPP, patch_size=PATCH, stride=112, device="cpu", batch_size=32, workers=2)
    out = embed_slide(slide, model, folder / "features", settings, progress=False).output
    data = read_features(out)
    tissue, tumour = tissue_regions(WIDTH, HEIGHT)
    frac_tumour = np.array([tumour[y:y + PATCH, x:x + PATCH].mean() for x, y in data.coords])
    frac_tissue = np.array([tissue[y:y + PATCH, x:x + PATCH].mean() for x, y in data.coords])
    truth = np.zeros(len(data), np.int64)  # 0: mixed, not scored
    truth[frac_tumour > 0.6] = TUMOUR
    truth[(frac_tumour < 0.05) & (frac_tissue > 0.5)] = STROMA
    return slide, out, data, truth


def chosen(truth: np.ndarray, n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(truth == c), n, replace=False) for c in (STROMA, TUMOUR)]
    return np.concatenate(picks)


def centres_um(data, index) -> np.ndarray:
    """World (y, x) µm of the patch centres: level-0 pixel x is centred at x * mpp."""
    xy = data.coords[index] + PATCH / 2 - 0.5
    return xy[:, ::-1] * MPP


def painted(data, truth, index, pixel_um: float = 16.0) -> tuple[np.ndarray, tuple, tuple]:
    """A labels raster (``pixel_um`` px, pixel 0 centred at world 0) with a 3x3 dab on each patch centre."""
    raster = np.zeros((int(HEIGHT * MPP / pixel_um) + 1, int(WIDTH * MPP / pixel_um) + 1), np.uint8)
    for (y, x), cls in zip(centres_um(data, index), truth[index], strict=True):
        i, j = round(y / pixel_um), round(x / pixel_um)
        raster[i - 1:i + 2, j - 1:j + 2] = cls
    return raster, (pixel_um, pixel_um), (0.0, 0.0)


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


# ---- widget -------------------------------------------------------------------------------
def open_slide(viewer, path):
    from napari.layers import Layer

    from napari_xmag._reader import slide_layer_data

    return viewer.add_layer(Layer.create(*slide_layer_data(str(path))))


def owned(viewer, role):
    return [
        layer for layer in viewer.layers
        if isinstance(layer.metadata.get("xmag-probe"), dict) and layer.metadata["xmag-probe"]["role"] == role
    ]


def trained_widget(viewer, embedded):
    from napari_xmag._widgets.probe import ProbeWidget

    slide, path, data, truth = embedded
    slide_layer = open_slide(viewer, slide)
    raster, scale, translate = painted(data, truth, chosen(truth))
    annotations = viewer.add_labels(raster, name="annotations", scale=scale, translate=translate, opacity=0.8,
                                   units=("um", "um"))
    widget = ProbeWidget(viewer)
    assert widget._slide_edit.value is slide_layer
    widget._features_edit.value = path
    widget._annotations_edit.value = annotations
    widget._on_train()
    return widget, slide_layer


def test_widget_trains_saves_and_loads(make_napari_viewer, embedded, tmp_path) -> None:
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    widget, _ = trained_widget(viewer, embedded)
    assert widget._status.value.startswith("probe trained on 8 patches"), widget._status.value
    [seg] = owned(viewer, "segmentation")
    heat = owned(viewer, "heatmaps")
    assert isinstance(seg, Labels) and set(np.unique(seg.data)) <= {0, 1, 2}
    assert len(heat) == 2 and all(isinstance(h, Image) for h in heat)
    expected = fewshot.predict_maps(embedded[1], widget._probe)[1]
    np.testing.assert_allclose(seg.scale, expected.scale)
    np.testing.assert_allclose(seg.translate, expected.translate)
    before = np.array(seg.data)

    widget._probe_file_edit.value = tmp_path / "tumour.npz"
    widget._on_save()
    assert (tmp_path / "tumour.npz").is_file()
    widget._probe = None
    widget._on_load()
    [seg] = owned(viewer, "segmentation")  # replaced, not duplicated
    np.testing.assert_array_equal(seg.data, before)
    assert len(owned(viewer, "heatmaps")) == 2


def test_widget_says_what_is_wrong(make_napari_viewer, embedded, tmp_path) -> None:
    from napari_xmag._widgets.probe import ProbeWidget

    viewer = make_napari_viewer()
    widget = ProbeWidget(viewer)
    widget._on_train()
    assert "Open a slide" in widget._status.value
    open_slide(viewer, embedded[0])
    widget._on_new_annotations()
    annotations = widget._annotations_edit.value
    assert annotations is not None and annotations.scale[-1] == 16.0
    widget._features_edit.value = tmp_path / "missing.h5"
    annotations.data[10:12, 10:12] = 1
    widget._on_train()
    assert "inference widget" in widget._status.value
    widget._features_edit.value = embedded[1]
    widget._on_train()
    assert "at least 2 classes" in widget._status.value or "no embedded patch" in widget._status.value


def test_npe2_offers_the_widget(make_napari_viewer) -> None:
    from napari_xmag._widgets.probe import ProbeWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-xmag", "XMAG few-shot probe")
    assert isinstance(widget, ProbeWidget)


def test_screenshot(make_napari_viewer, qtbot, embedded, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 900)
    widget, _ = trained_widget(viewer, embedded)
    viewer.window.add_dock_widget(widget, name="XMAG few-shot probe", area="right")
    for layer in owned(viewer, "heatmaps"):
        layer.visible = False
    annotations = viewer.layers["annotations"]
    annotations.colormap = {None: [0, 0, 0, 0], 0: [0, 0, 0, 0], 1: "#00ffff", 2: "#ffff00"}
    annotations.opacity = 1.0
    viewer.layers.move(viewer.layers.index(annotations), len(viewer.layers))  # painted dabs on top
    qtbot.wait(200)  # let the canvas take its size beside the dock before framing the slide
    viewer.reset_view()
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(shot, "widget-probe.png", tmp_path)
    assert shot.shape[0] > 300
