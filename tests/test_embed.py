"""Whole-slide embedding: coords by hand, features equal a direct forward, reruns, errors."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cases import ALL_CASES, BOXES, CMU1, Case
from napari_xmag.cli import main
from napari_xmag.embed import (
    EmbedCancelled,
    EmbedSettings,
    embed_patches,
    embed_slide,
    embed_slide_steps,
    iter_patch_batches,
)
from napari_xmag.features import is_features_file, read_features
from napari_xmag.models import create_model
from napari_xmag.models.plan import MODELS_ENV
from napari_xmag.models.precision import prepare_model
from napari_xmag.slide import Slide, SlideError
from napari_xmag.synthetic import write_aperio_pyramid
from napari_xmag.tiling import NoTissueError


@pytest.fixture(scope="module")
def tiny_xmag():
    return create_model("xmag", weights="random", tiny=True)


def direct_forward(model, slide_path, coords, mpp, size=224) -> np.ndarray:
    """The reference: read each patch with the store and run the model on it, one by one."""
    with Slide(slide_path) as slide, torch.inference_mode():
        rows = [
            model.embed(model.preprocess(slide.read_region(int(x), int(y), size, mpp=mpp).image[None]))
            for x, y in coords
        ]
    return torch.cat(rows).numpy()


def test_cli_embed_cmu1_coords_by_hand_and_features_equal_a_direct_forward(tmp_path, capsys) -> None:
    """The real XMAG architecture (ViT-B/14, random weights) on real tissue at 5x."""
    rc = main(["embed", str(CMU1.path), "--model", "xmag", "--weights", "random", "--out",
               str(tmp_path), "--batch-size", "3", "--no-progress"])  # random weights: auto is fp32
    assert rc == 0
    assert "CMU-1-Small-Region.svs: 4 patches in" in capsys.readouterr().out
    data = read_features(tmp_path / "CMU-1-Small-Region.h5")
    # 224 px at 2.0 µm/px on a 0.499 µm/px scan: 897.8 level-0 px, so origins step by 898.
    # The grid is 3 x 4 over 2220 x 2967; tissue passes the 25 % threshold in column 1 only.
    step = 898
    assert data.coords.tolist() == [[step, 0], [step, step], [step, 2 * step], [step, 3 * step]]
    assert data.coords_attrs["patch_size"] == 224
    assert data.coords_attrs["patch_size_level0"] == 898
    assert data.coords_attrs["patch_size_level0_exact"] == pytest.approx(224 * 2.0 / 0.499)
    assert data.coords_attrs["target_magnification"] == 5.0
    assert data.coords_attrs["level0_magnification"] == 20.0
    assert data.attrs["model"] == "xmag" and data.attrs["weights_random"] is True
    assert data.attrs["precision"] == "fp32" and data.attrs["slide_mpp"] == 0.499
    assert data.features.shape == (4, 768) and data.features.dtype == np.float32
    model = create_model("xmag", weights="random")  # random weights are a fixed seeded draw
    np.testing.assert_allclose(data.features, direct_forward(model, CMU1.path, data.coords, 2.0),
                               rtol=1e-4, atol=1e-4)


def test_embed_slide_on_a_pyramid_reads_level_1(tmp_path, pyramid_path, tiny_xmag) -> None:
    result = embed_slide(pyramid_path, tiny_xmag, tmp_path, EmbedSettings(batch_size=4), progress=False)
    data = read_features(result.output)
    assert result.patches == len(data) > 4
    assert not (data.coords % 896).any()  # level 1 (downsample 4) read on its own pixel grid
    assert data.coords_attrs["level"] == 1
    np.testing.assert_allclose(
        data.features, direct_forward(tiny_xmag, pyramid_path, data.coords, 2.0), rtol=1e-4, atol=1e-5
    )


def test_rerun_skips_and_other_settings_refuse(tmp_path, pyramid_path, tiny_xmag) -> None:
    first = embed_slide(pyramid_path, tiny_xmag, tmp_path, progress=False)
    stamp = first.output.stat().st_mtime_ns
    again = embed_slide(pyramid_path, tiny_xmag, tmp_path, progress=False)
    assert again.skipped and again.patches == first.patches and first.output.stat().st_mtime_ns == stamp
    with pytest.raises(SlideError, match=r"exists, made with other settings \(stride: 224 -> 112\)"):
        embed_slide(pyramid_path, tiny_xmag, tmp_path, EmbedSettings(stride=112), progress=False)
    overlapped = embed_slide(pyramid_path, tiny_xmag, tmp_path, EmbedSettings(stride=112),
                             overwrite=True, progress=False)
    assert overlapped.patches > 3 * first.patches


def test_zarr_keeps_token_grids(tmp_path, pyramid_path, tiny_xmag) -> None:
    result = embed_slide(pyramid_path, tiny_xmag, tmp_path, EmbedSettings(tokens=True), fmt="zarr",
                         progress=False)
    data = read_features(result.output)
    assert data.tokens is not None and data.tokens.shape == (len(data), 16, 16, tiny_xmag.embed_dim)
    h5 = read_features(embed_slide(pyramid_path, tiny_xmag, tmp_path / "h5", progress=False).output)
    np.testing.assert_allclose(data.features, h5.features, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_cpu_precisions_stay_close_to_fp32(tmp_path, pyramid_path, precision) -> None:
    model = create_model("xmag", weights="random", tiny=True)
    ref = read_features(embed_slide(pyramid_path, model, tmp_path / "fp32", EmbedSettings(precision="fp32"),
                                    progress=False).output)
    out = embed_slide(pyramid_path, model, tmp_path / precision, EmbedSettings(precision=precision),
                      progress=False)
    data = read_features(out.output)
    assert data.attrs["precision"] == precision
    cos = (data.features * ref.features).sum(1) / (
        np.linalg.norm(data.features, axis=1) * np.linalg.norm(ref.features, axis=1)
    )
    assert cos.min() > 0.98, cos.min()
    # the caller's model is untouched: still fp32 and still giving the reference
    assert next(model.parameters()).dtype == torch.float32


def test_batches_come_in_order_from_several_readers(pyramid_path) -> None:
    coords = np.array([[x, y] for y in range(0, 2400, 896) for x in range(0, 3200, 896)])
    batches = list(iter_patch_batches(pyramid_path, coords, 2.0, 224, batch_size=2, workers=3))
    assert [len(b) for b in batches] == [2] * (len(coords) // 2) + [1] * (len(coords) % 2)
    stacked = np.concatenate(batches)
    with Slide(pyramid_path) as slide:
        for i, (x, y) in enumerate(coords):
            np.testing.assert_array_equal(stacked[i], slide.read_region(x, y, 224, mpp=2.0).image)


def test_cancel_stops_without_writing(tmp_path, pyramid_path, tiny_xmag) -> None:
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        cancel.set()  # ask to stop after the first batch

    with pytest.raises(EmbedCancelled, match="cancelled after") as stopped:
        embed_slide(pyramid_path, tiny_xmag, tmp_path, EmbedSettings(batch_size=2), progress=progress,
                    cancel=cancel)
    # no features file; the batch done is kept for a resume, and the error says so
    assert seen == [2] and [p.name for p in tmp_path.iterdir()] == [f"{Path(pyramid_path).stem}.h5.partial"]
    assert stopped.value.kept is not None and "2 of" in stopped.value.kept and "resume" in stopped.value.kept
    assert not is_features_file(tmp_path / f"{Path(pyramid_path).stem}.h5.partial")


def test_cancelled_run_resumes_to_the_same_bits(tmp_path, pyramid_path, tiny_xmag) -> None:
    """Cancel after 2 batches, run again: only the rest is embedded, the file equals a straight run's;
    a run taking the batches nearest a point first writes the same bits too."""
    settings = EmbedSettings(batch_size=2, precision="fp32")
    straight = embed_slide(pyramid_path, tiny_xmag, tmp_path / "straight", settings, progress=False)
    cancel = threading.Event()
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if done >= 4:
            cancel.set()

    with pytest.raises(EmbedCancelled):
        embed_slide(pyramid_path, tiny_xmag, tmp_path / "parted", settings, progress=stop_after_two,
                    cancel=cancel)
    counted = []
    resumed = embed_slide(pyramid_path, tiny_xmag, tmp_path / "parted", settings,
                          progress=lambda done, total: counted.append(done))
    assert counted[0] == 4 and counted[-1] == straight.patches  # starts from the 4 kept
    assert not (tmp_path / "parted" / (resumed.output.name + ".partial")).exists()
    a, b = read_features(straight.output), read_features(resumed.output)
    assert np.array_equal(a.coords, b.coords) and np.array_equal(a.features, b.features)

    centre = (float(a.coords[:, 0].max()), float(a.coords[:, 1].max()))  # the far corner first
    steps = embed_slide_steps(pyramid_path, tiny_xmag, tmp_path / "near", settings, progress=False,
                              near=centre)
    runs = []

    def keep_result():
        runs.append((yield from steps))

    filled = [step.rows.start for step in keep_result() if step.rows.stop > step.rows.start]
    near_run = runs[0]
    assert filled[0] == max(filled) and sorted(filled) == list(range(0, straight.patches, 2))
    assert np.array_equal(read_features(near_run.output).features, a.features)
    # a partial of other settings is not resumed from: a batch size of 3 embeds everything again
    cancel.clear()
    with pytest.raises(EmbedCancelled):
        embed_slide(pyramid_path, tiny_xmag, tmp_path / "other", settings, progress=stop_after_two,
                    cancel=cancel)
    seen = []
    embed_slide(pyramid_path, tiny_xmag, tmp_path / "other", EmbedSettings(batch_size=3, precision="fp32"),
                progress=lambda done, total: seen.append(done))
    assert seen[0] == 3


def test_embed_patches_empty_batch_list(tiny_xmag) -> None:
    feats, tokens = embed_patches(tiny_xmag, iter([]), 0, progress=False)
    assert feats.shape == (0, tiny_xmag.embed_dim) and tokens is None


def test_no_tissue_is_a_clear_error(tmp_path, tiny_xmag) -> None:
    blank = write_aperio_pyramid(tmp_path / "blank.svs", 2000, 1600,
                                 lambda ds, y, x, h, w: np.full((h, w, 3), 250, np.uint8))
    with pytest.raises(NoTissueError, match=r"blank\.svs: no 224 px patch at 2.0 µm/px holds 25% tissue"):
        embed_slide(blank, tiny_xmag, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(CMU1.path), "--model", "hf-hub:MahmoodLab/UNI2-h", "--weights", "auto"], "UNI2-h"),
        ([str(CMU1.path), "--mpp", "7y"], "7y"),
    ],
    ids=["offline-weights", "bad-mpp"],
)
def test_cli_embed_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    argv = ["embed", *args, "--out", str(tmp_path / "out"), "--no-progress"]
    if "--model" not in args:
        argv += ["--model", "xmag", "--weights", "random"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("xmag embed: error: ") and message in err[-1], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_cli_embed_every_test_slide(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    """`xmag embed SLIDE` with no flags: the table's patch count, or exit 2 with one line
    naming the file and the cause, and nothing written."""
    monkeypatch.setenv(MODELS_ENV, "tiny-random")
    out = tmp_path / "out"
    code = main(["embed", str(case.path), "--out", str(out), "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    if case.patches_5x is not None:
        assert code == 0
        assert len(read_features(out / f"{case.name}.h5").coords) == case.patches_5x
        return
    assert code == 2 and last.startswith("xmag embed: error: ") and str(case.path) in last
    assert re.search(case.embed_error or case.error, last), last
    assert not out.exists() or not list(out.iterdir())


def test_embed_with_mpp_override(tmp_path, capsys) -> None:
    assert main(["embed", str(BOXES.path), "--model", "xmag", "--weights", "random", "--out",
                 str(tmp_path), "--mpp-override", "0.25", "--tissue-threshold", "0", "--mpp", "20x",
                 "--no-progress"]) == 0
    with h5py.File(tmp_path / "boxes.h5") as f:
        assert f["features"].attrs["mpp_override"] == 0.25
        assert f["coords"].attrs["mpp"] == 0.5


def test_cpu_precisions_match_a_plain_conversion_and_leave_the_model_alone() -> None:
    """int8/bf16 copies share the tensors they do not convert, are made once per weights, and
    give exactly what quantising or casting a full copy gives."""
    import copy

    model = create_model("xmag", weights="random", tiny=True)
    x = torch.rand(3, 3, 224, 224)
    with torch.inference_mode():
        ref = model.embed(x)
        int8 = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        q = prepare_model(model, "cpu", "int8")[0]
        assert torch.equal(q.embed(x), int8.embed(x))
        assert prepare_model(model, "cpu", "int8")[0] is q  # once per model and weights
        b = prepare_model(model, "cpu", "bf16")[0]
        assert torch.equal(b.embed(x.bfloat16()), bf16.embed(x.bfloat16()))
        assert torch.equal(model.embed(x), ref)  # the caller's model is still fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model.backbone.blocks[0].mlp.fc1) is torch.nn.Linear
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # as an optimiser step would
    assert prepare_model(model, "cpu", "int8")[0] is not q


def test_a_partial_of_another_model_or_a_failed_keep_never_gets_in_the_way(
        tmp_path, pyramid_path, tiny_xmag, monkeypatch) -> None:
    """A partial left by a model of another width is not resumed (it embeds from 0, no crash);
    a partial that cannot be written does not hide the cancel that asked for it."""
    import napari_xmag.embed as embed_module

    cancel = threading.Event()

    def stop_at_once(done, total):
        cancel.set()

    settings = EmbedSettings(batch_size=2, precision="fp32")
    with pytest.raises(EmbedCancelled):
        embed_slide(pyramid_path, tiny_xmag, tmp_path, settings, progress=stop_at_once, cancel=cancel)
    wider = create_model("xmag", weights="random", tiny=True, overrides={"embed_dim": 48, "num_heads": 2})
    seen = []
    result = embed_slide(pyramid_path, wider, tmp_path, settings, progress=lambda d, t: seen.append(d))
    assert result.resumed == 0 and seen[-1] == result.patches  # from 0, not from the other model's rows
    assert read_features(result.output).features.shape[1] == wider.embed_dim

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embed_module, "write_partial", no_space)
    cancel.clear()
    with pytest.raises(EmbedCancelled) as stopped:
        embed_slide(pyramid_path, tiny_xmag, tmp_path / "full", settings, progress=stop_at_once,
                    cancel=cancel)
    assert stopped.value.kept is None  # nothing kept, said as such; the cancel is what the caller sees
