"""XMAG distillation on real tissue, on the CPU: it learns, resumes exactly and exports.

The models are tiny versions of the real ones, built through the same code paths
(``create_model(..., tiny=True, overrides=...)``, random weights, fixed seeds):

- teacher: UNI2-h tiny (width 32, 2 blocks, registers, SwiGLU) with its layer-scale gammas
  at 1.0 instead of 1e-5 (``init_values``). With DINOv2's 1e-5 the random blocks are nearly
  no-ops and the teacher's CLS barely depends on the image, so there would be little to learn.
  Its width stays 32: an exported student's heads are rebuilt for the registered teacher's
  (tiny) width, so a wider teacher would train but not reload.
- student: the XMAG student (DINOv2 ViT/14) tiny (width 32, 2 blocks), built for 112 px inputs.
  Its layer scales keep DINOv2's 1e-5 start: they grow as it learns.

The pairs keep the real geometry at half the field: a 112 px student patch at 2.0 µm/px
against its 4x4 teacher crops of 112 px at 0.5 µm/px (224 µm of tissue instead of 448 µm),
cut by ``patch_grid`` and ``pair_geometry`` from CMU-1-Small-Region with overlapping strides.
Held-out pairs come from whole spatial blocks that no training field overlaps.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import BOXES, CMU1
from napari_xmag.cli import main
from napari_xmag.distill import (
    PairDataset,
    PairIndex,
    PairSettings,
    SlideListError,
    TeacherCache,
    TrainConfig,
    TrainError,
    View,
    apply_view,
    build_teacher_cache,
    read_log,
    read_slide_list,
    spatial_split,
    train,
)
from napari_xmag.distill.augment import grey_level
from napari_xmag.distill.pairs import read_pair
from napari_xmag.distill.teacher import embed_crops
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.models import create_model
from napari_xmag.slide import MissingMppError, Slide

TINY = {
    "teacher": "uni2-h", "teacher_weights": "random", "teacher_tiny": True,
    "teacher_overrides": {"init_values": 1.0},
    "student": "xmag", "student_weights": "random", "student_tiny": True,
    "student_overrides": {"img_size": 112},
    "patch_size": 112, "crop_size": 112,
    "num_workers": 0, "cache_workers": 0, "progress": False,
}
# Held-out thresholds (see the module docstring and docs/distillation.md).
THRESHOLDS = {"global_centred_cos": 0.5, "global_r2": 0.3, "local_centred_cos": 0.3, "global_cos": 0.9}


def tiny_config(out: Path, **changes) -> TrainConfig:
    return TrainConfig(slides=[CMU1.path], out_dir=out, **{**TINY, **changes})


# ---- it learns ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """200 steps on the cached teacher, 15% of the pairs held out.

    One view per pair without flips or jitter (two identical views would only double the
    work; augmentation has its own tests), a learning rate for 200 steps rather than 200 000.
    """
    root = tmp_path_factory.mktemp("distill")
    config = tiny_config(
        root / "run", stride=16, steps=200, lr=2e-3, batch_size=32, views=1, flips=False,
        cache=root / "teacher.zarr", cache_in_memory=True, holdout=0.15, holdout_block_um=600,
    )
    start = time.perf_counter()
    result = train(config)
    return config, result, time.perf_counter() - start


def test_student_learns_the_teacher_on_held_out_tissue(learned) -> None:
    config, result, seconds = learned
    metrics = result.metrics
    rows = ("baseline", "before", "final")
    print(f"\nheld-out alignment, {metrics['train_pairs']} training / {metrics['heldout_pairs']} held-out"
          f" pairs, {result.steps} steps, {seconds:.0f} s (cache + training + evaluation)")
    print(f"{'':24}" + "".join(f"{r:>10}" for r in rows))
    for key in metrics["final"]:
        print(f"{key:24}" + "".join(f"{metrics[r][key]:10.3f}" for r in rows))
    for key, threshold in THRESHOLDS.items():
        final = metrics["final"][key]
        assert final >= threshold, (key, final)
        assert final > metrics["baseline"][key] and final > metrics["before"][key], key
    assert metrics["final"]["local_r2"] > max(metrics["baseline"]["local_r2"], metrics["before"]["local_r2"])
    # the loss went down: the log's last window against its first
    log = read_log(config.out_dir / "log.csv")
    assert float(log[-1]["loss"]) < float(log[0]["loss"]) - 0.5


def test_held_out_fields_share_no_tissue_with_training_fields() -> None:
    settings = PairSettings(patch_size=112, crop_size=112, stride=16)
    index = PairIndex.build(read_slide_list([CMU1.path]), settings)
    train_pos, held_pos = spatial_split(index, 0.15, 600)
    assert len(train_pos) > 200 and len(held_pos) > 80
    side = index.geometries[0].region_size_level0
    delta = np.abs(index.coords[train_pos, None] - index.coords[None, held_pos])
    assert not ((delta[..., 0] < side) & (delta[..., 1] < side)).any()


# ---- the export -------------------------------------------------------------------------------
def test_export_loads_by_path_with_identical_embeddings(learned, tmp_path) -> None:
    _, result, _ = learned
    export = result.export_dir
    assert (export / "model.safetensors").exists() and (export / "distillation.json").exists()
    loaded = create_model(export)
    assert loaded.heads is not None and loaded.weights.heads == "checkpoint"
    ema = result.ema.eval()
    batch = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    with torch.inference_mode():
        (a, grid_a), (b, grid_b) = ema.embed(batch, tokens=True), loaded.embed(batch, tokens=True)
        assert torch.equal(a, b) and torch.equal(grid_a, grid_b)
        assert torch.equal(ema.heads["global"](a), loaded.heads["global"](b))

    settings = EmbedSettings(patch_size=112, device="cpu", workers=1, batch_size=16)
    in_memory = embed_slide(CMU1.path, ema, tmp_path / "ema", settings, progress=False)
    from_folder = embed_slide(CMU1.path, loaded, tmp_path / "loaded", settings, progress=False)
    assert main(["embed", str(CMU1.path), "--model", str(export), "--out", str(tmp_path / "cli"),
                 "--patch-size", "112", "--device", "cpu", "--workers", "1", "--no-progress"]) == 0
    features = []
    for path in (in_memory.output, from_folder.output, tmp_path / "cli" / in_memory.output.name):
        with h5py.File(path, "r") as fh:
            features.append(fh["features"][:])
    assert len(features[0]) == in_memory.patches > 0
    np.testing.assert_array_equal(features[0], features[1])
    np.testing.assert_array_equal(features[0], features[2])


# ---- resume -------------------------------------------------------------------------------------
def test_resume_reproduces_the_uninterrupted_run(tmp_path) -> None:
    """6 steps straight vs 3 + resume + 3: the same losses, metrics and weights, bit for bit.
    Resuming a folder with no checkpoint yet is a fresh run.

    Uncached, so the full path runs: slide reads, two views with shared flips and colour
    jitter, the teacher on the crops. The interrupted run reads with a worker process, the
    straight one in the main process: the data and its augmentation do not depend on it.
    """
    base = {"stride": 56, "min_tissue": 0.5, "steps": 6, "batch_size": 4, "lr": 1e-3, "log_every": 1,
            "holdout": 0.3, "holdout_block_um": 600, "five_x_source": "downsample", "warmup_steps": 2}
    straight = train(tiny_config(tmp_path / "straight", **base))
    parted = tiny_config(tmp_path / "parted", **base, num_workers=1)
    first = train(parted, stop_at=3)
    assert first.export_dir is None and first.steps == 3
    with pytest.raises(TrainError, match="resume"):
        train(parted)  # a second start in the same folder must say --resume
    with pytest.raises(TrainError, match=r"changed configuration.*lr"):
        train(replace(parted, lr=2e-3), resume=True)
    second = train(parted, resume=True)
    assert second.steps == 6 and second.export_dir is not None

    def losses(run):
        return [(r["step"], r["loss"], r["loss_global"], r["loss_local"], r["grad_norm"], r["lr"])
                for r in read_log(run.out_dir / "log.csv")]

    assert len(losses(straight)) == 6
    assert losses(second) == losses(straight)
    # --resume before any checkpoint exists (a job killed early, a requeue script) starts at 0
    fresh = train(tiny_config(tmp_path / "fresh", **base), resume=True)
    assert losses(fresh) == losses(straight) and fresh.metrics == straight.metrics
    assert second.metrics == straight.metrics
    for model in ("ema", "student"):
        a, b = getattr(straight, model).state_dict(), getattr(second, model).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), model


# ---- augmentation and the cache ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def few_pairs():
    """A dozen pairs whose 5x image is the 20x region downsampled (the paper's way)."""
    settings = PairSettings(
        patch_size=112, crop_size=112, stride=112, min_tissue=0.5, five_x_source="downsample"
    )
    return PairIndex.build(read_slide_list([CMU1.path]), settings)


def test_views_flip_and_jitter_both_magnifications_alike(few_pairs) -> None:
    geometry = few_pairs.geometries[0]
    with Slide(CMU1.path) as slide:
        x, y = few_pairs.coords[0]
        _, region = read_pair(slide, geometry, int(x), int(y))
    crops = geometry.split(region)
    # flipping the region, then cutting, keeps crop k at row k // 4, column k % 4 of the flipped field
    flipped = geometry.split(apply_view(region, View(hflip=True, vflip=True), 0.0))
    for k in range(16):
        row, col = divmod(k, 4)
        np.testing.assert_array_equal(flipped[k], crops[(3 - row) * 4 + (3 - col)][::-1, ::-1])

    dataset = PairDataset(few_pairs, views=2, flips=True, jitter=True, seed=3)
    item = dataset[(0, 5)]
    again = dataset[(0, 5)]
    np.testing.assert_array_equal(item["student"], again["student"])  # keyed, not global, randomness
    assert not np.array_equal(item["student"], dataset[(0, 6)]["student"])  # a new epoch, new views
    views = dataset.draw(0, 5)
    assert all(v.jittered for v in views)
    from PIL import Image

    def reduced(field: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(field).resize((112, 112), Image.Resampling.LANCZOS)).astype(int)

    grey = grey_level(region)
    for v, student, teacher in zip(views, item["student"], item["teacher"], strict=True):
        field = apply_view(region, v, grey)
        np.testing.assert_array_equal(teacher, geometry.split(field))
        # The 5x image is the same field with the same flips and colours: equal to the jittered
        # 20x field reduced, up to rounding and clipping (the jitter is applied after reduction).
        same = np.abs(student - reduced(field)).mean()
        no_jitter = replace(v, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
        flips_only = np.abs(student - reduced(apply_view(region, no_jitter, grey))).mean()
        assert same < 1.0 and flips_only > 2 * same, (same, flips_only)


def test_cache_holds_the_teacher_of_each_flip_variant(few_pairs, tmp_path) -> None:
    teacher = create_model("uni2-h", weights="random", tiny=True, overrides={"init_values": 1.0})
    cache = build_teacher_cache(tmp_path / "c.zarr", few_pairs, teacher, flips=True, progress=False)
    assert cache.attrs["variants"] == ["none", "h", "v", "hv"] and len(cache) == len(few_pairs)
    geometry = few_pairs.geometries[0]
    with Slide(CMU1.path) as slide:
        for row, (x, y) in enumerate(few_pairs.coords[:3]):
            student, region = read_pair(slide, geometry, int(x), int(y), "downsample")
            np.testing.assert_array_equal(cache.student(row), student)
            for variant, view in enumerate([View(), View(hflip=True), View(vflip=True), View(True, True)]):
                crops = torch.from_numpy(geometry.split(apply_view(region, view, 0.0)))
                expected = embed_crops(teacher, crops).numpy()
                np.testing.assert_allclose(cache.targets(row, [variant])[0], expected, atol=2e-3, rtol=2e-3)
    # the dataset serves the variant of each view's flips, and refuses jitter with a cache
    subset = few_pairs.subset([5, 2])  # a subset addresses the cache by its rows
    dataset = PairDataset(subset, views=2, flips=True, jitter=False, seed=1, cache=TeacherCache(cache.path))
    item = dataset[(0, 0)]
    for v, student, target in zip(dataset.draw(0, 0), item["student"], item["target"], strict=True):
        np.testing.assert_array_equal(student, apply_view(cache.student(5), v, 0.0))
        np.testing.assert_array_equal(target, cache.targets(5, [v.variant])[0])
    with pytest.raises(ValueError, match="whole PairIndex"):
        build_teacher_cache(tmp_path / "d.zarr", subset, teacher)
    with pytest.raises(ValueError, match="jitter"):
        PairDataset(few_pairs, jitter=True, cache=cache)
    other = create_model("uni2-h", weights="random", tiny=True)  # same name, other architecture
    from napari_xmag.provenance import model_identity

    with pytest.raises(ValueError, match="another teacher"):
        cache.check(few_pairs, model_identity(other), flips=True)


# ---- configuration errors --------------------------------------------------------------------------
def test_config_errors_are_clear(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideListError, match="no slide files"):
        TrainConfig(slides=tmp_path / "empty", out_dir=tmp_path / "o")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.svs,1\n")
    with pytest.raises(SlideListError, match="needs a 'slide' column"):
        TrainConfig(slides=bad, out_dir=tmp_path / "o")
    missing = tmp_path / "missing.csv"
    missing.write_text("slide\nnot-here.svs\n")
    with pytest.raises(SlideListError, match=r"line 2: .*not-here\.svs: no such slide file"):
        TrainConfig(slides=missing, out_dir=tmp_path / "o")
    mpp = tmp_path / "mpp.csv"
    mpp.write_text(f"slide,mpp_override\n{CMU1.path},fast\n")
    with pytest.raises(SlideListError, match="mpp_override 'fast'"):
        TrainConfig(slides=mpp, out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="jitter=True cannot be used with a teacher cache"):
        TrainConfig(slides=[CMU1.path], out_dir=tmp_path / "o", cache=tmp_path / "c.zarr", jitter=True)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(slides=[CMU1.path], out_dir=tmp_path / "o", precision="fp8")

    no_mpp = tmp_path / "no-mpp.csv"
    no_mpp.write_text(f"slide\n{BOXES.path}\n")
    config = TrainConfig(slides=no_mpp, out_dir=tmp_path / "o", **{k: v for k, v in TINY.items()})
    with pytest.warns(UserWarning), pytest.raises(MissingMppError, match=r"boxes\.tiff.*mpp_override"):
        train(config)
    # the CSV is read relative to its folder, and mpp_override is used
    shutil.copy(CMU1.path, tmp_path / "cmu1.svs")
    ok = tmp_path / "ok.csv"
    ok.write_text("slide,mpp_override\ncmu1.svs,0.5\n")
    entries = read_slide_list(ok)
    assert entries[0].path == tmp_path / "cmu1.svs" and entries[0].mpp_override == 0.5


def test_cli_distill_with_a_config_file(tmp_path, capsys) -> None:
    # bf16 autocast on the CPU: the mixed-precision path of the step and of the teacher
    config = tiny_config(tmp_path / "run", stride=56, steps=2, batch_size=2, views=1, warmup_steps=0,
                         precision="bf16")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({k: v for k, v in config.to_dict().items() if k not in ("out_dir", "slides")}))
    assert main(["distill", str(CMU1.path), "--out", str(tmp_path / "run"), "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "distilled 2 steps" in out and (tmp_path / "run" / "student" / "config.json").exists()
    with open(tmp_path / "run" / "log.csv", newline="") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["2"]
    # the same folder again: one line, exit 2, no traceback
    assert main(["distill", str(CMU1.path), "--out", str(tmp_path / "run"), "--config", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "x")]) == 2
