"""``recipe="official"``: each setting against what the released trainer does.

The released code (AI4Path-Lab/XMAG) draws flips and a jitter coin per view with torch.rand,
jitters with torchvision's functional ops on PIL images, schedules with transformers'
``get_linear_schedule_with_warmup`` (warm-up = the whole run), keeps a constant EMA 0.999,
decays every parameter, starts the student from DINOv2 ViT-B/14 and makes the 5x view by PIL
Lanczos from the 896 px tile, with 48 pairs on each of 24 GPUs per step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as tf
from PIL import Image

from cases import CMU1
from napari_xmag.distill import TrainConfig, View, apply_view, draw_views, read_log, train
from napari_xmag.distill.augment import view_rng
from napari_xmag.distill.optim import ModelEma, lr_schedule, param_groups
from napari_xmag.distill.recipes import OFFICIAL_BATCH, recipe_options
from napari_xmag.models.zoo import DINOV2_VITB14
from napari_xmag.slide import Slide
from tiny_training import TINY, tiny_config


def official_config(tmp_path, **changes) -> TrainConfig:
    return TrainConfig.from_recipe("official", slides=[CMU1.path], out_dir=tmp_path / "run", **changes)


def test_official_settings(tmp_path) -> None:
    config = official_config(tmp_path)
    assert (config.recipe, config.epochs, config.lr, config.weight_decay) == ("official", 10, 5e-4, 0.05)
    assert config.effective_batch == OFFICIAL_BATCH == 1152 and config.seed == 42
    assert (config.schedule, config.warmup_steps) == ("linear", None)
    assert (config.ema_decay, config.ema_warmup) == (0.999, False)
    assert config.decay_all and config.clip_grad == 1.0 and config.five_x_source == "downsample"
    assert (config.jitter, config.jitter_p, config.jitter_style) == (True, 0.5, "torchvision")
    assert config.student == "xmag" and config.student_weights == f"hf-hub:{DINOV2_VITB14.hf_id}"
    # 32 pairs a forward here: 36 accumulated forwards a step; on 24 GPUs at 48 one forward
    assert config.accumulation(1) == 36 and config.step_lr(1) == 5e-4
    assert TrainConfig.from_recipe("official", slides=[CMU1.path], out_dir=tmp_path / "r",
                                   batch_size=48).accumulation(24) == 1
    scaled = official_config(tmp_path, batch_scaling="lr")
    assert scaled.accumulation(1) == 1 and scaled.step_lr(1) == pytest.approx(5e-4 * 32 / 1152)
    # our recipe is the plain defaults; options given win over the recipe's
    assert TrainConfig.from_recipe("xmag", slides=[CMU1.path], out_dir=tmp_path / "x") == TrainConfig(
        slides=[CMU1.path], out_dir=tmp_path / "x")
    assert official_config(tmp_path, lr=1e-4).lr == 1e-4
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_options("paper")
    # the recipe round-trips through config.json
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_jitter_chance_and_ranges_are_the_released_ones() -> None:
    rng = view_rng(0, 0, 0)
    views = draw_views(rng, 20_000, flips=True, jitter=True, jitter_p=0.5)
    jittered = [v for v in views if v.jittered]
    share = len(jittered) / len(views)
    assert abs(share - 0.5) < 4 * (0.25 / len(views)) ** 0.5  # 4 standard errors
    for flip in ("hflip", "vflip"):
        assert abs(np.mean([getattr(v, flip) for v in views]) - 0.5) < 0.015
    for name, low, high in (("brightness", 0.95, 1.05), ("contrast", 0.95, 1.05), ("saturation", 0.95, 1.05),
                            ("hue", -0.05, 0.05)):
        values = np.array([getattr(v, name) for v in jittered])
        assert low <= values.min() < low + 0.001 and high - 0.001 < values.max() <= high, name
    # our recipe jitters every view (no coin drawn: earlier runs draw the same views)
    assert all(v.jittered for v in draw_views(view_rng(0, 0, 0), 200, flips=True, jitter=True))


def test_torchvision_jitter_is_the_released_transform() -> None:
    """The released paired transform, on a real 896 px tile and its 224 px Lanczos view."""
    with Slide(CMU1.path) as slide:
        region = slide.read_region(1000, 1500, 896, mpp=0.5).image
    low = np.asarray(Image.fromarray(region).resize((224, 224), Image.Resampling.LANCZOS))
    view = View(hflip=True, vflip=False, brightness=1.04, contrast=0.96, saturation=1.03, hue=0.045)

    def released(image: np.ndarray) -> np.ndarray:  # data/transform.py, step by step
        pil = tf.hflip(Image.fromarray(image))
        pil = tf.adjust_brightness(pil, 1.04)
        pil = tf.adjust_contrast(pil, 0.96)
        pil = tf.adjust_saturation(pil, 1.03)
        return np.asarray(tf.adjust_hue(pil, 0.045))

    for image in (region, low):
        np.testing.assert_array_equal(apply_view(image, view, 0.0, "torchvision"), released(image))
    # ours turns hue in YIQ, stronger at the same value: the two styles are really different
    hue_only = View(hue=0.045)
    ours = apply_view(region, hue_only, 0.0).astype(float)
    theirs = apply_view(region, hue_only, 0.0, "torchvision").astype(float)
    assert np.abs(ours - region).mean() > 1.2 * np.abs(theirs - region).mean()


def test_linear_schedule_equals_transformers() -> None:
    from transformers import get_linear_schedule_with_warmup

    total = 40
    for warmup in (None, 10):
        model = torch.nn.Linear(2, 2)
        ours = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=5e-4),
                                                 lr_schedule("linear", total, warmup, 5e-4, 1e-6))
        theirs = get_linear_schedule_with_warmup(torch.optim.SGD(model.parameters(), lr=5e-4),
                                                 num_warmup_steps=total if warmup is None else warmup,
                                                 num_training_steps=total)
        for _ in range(total):
            assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
            ours.optimizer.step(), theirs.optimizer.step()
            ours.step(), theirs.step()
    # the official run: warm-up over all of it, so the rate rises from 0 and never decays
    factor = lr_schedule("linear", 1000, None, 5e-4, 1e-6)
    assert factor(0) == 0 and factor(500) == 0.5 and factor(999) == 0.999


def test_constant_ema_and_decay_on_every_parameter() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    ema = ModelEma(model, 0.999, warmup=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, value in ema.module.state_dict().items():  # 0.999 from the first update
        torch.testing.assert_close(value, 0.999 * start[name] + 0.001 * (start[name] + 1.0))
    assert ModelEma(model, 0.999).current_decay() < 0.2  # ours ramps
    (group,) = param_groups(model, 0.05, decay_all=True)
    assert group["weight_decay"] == 0.05 and len(group["params"]) == 4  # biases and the norm too
    assert [len(g["params"]) for g in param_groups(model, 0.05)] == [1, 3]


def test_accumulated_official_run_steps_once_per_effective_batch(tmp_path) -> None:
    """4 pairs a forward, an effective batch of 8: each logged step is two forwards, its lr the
    linear warm-up over the whole run (from 0)."""
    tiny = {k: v for k, v in TINY.items() if k != "student_weights"}
    config = official_config(tmp_path, **tiny, student_weights="random", stride=56, min_tissue=0.5,
                             batch_size=4, effective_batch=8, steps=3, log_every=1, views=1)
    result = train(config)
    rows = read_log(result.out_dir / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.0, 5e-4 / 3, 2 * 5e-4 / 3])
    assert all(float(r["pairs_per_s"]) > 0 for r in rows) and result.finished


def test_cached_jitter_trains_on_exact_targets(tmp_path) -> None:
    """A teacher cache with the released jitter chance: the same losses as the uncached run (the
    jittered views' targets come from the live teacher), up to the cache's float16 targets."""
    base = {"stride": 56, "min_tissue": 0.5, "steps": 4, "batch_size": 4, "log_every": 1, "views": 2,
            "jitter": True, "jitter_p": 0.5, "jitter_style": "torchvision", "five_x_source": "downsample",
            "precision": "fp32"}
    uncached = train(tiny_config(tmp_path / "a", **base))
    cached = train(tiny_config(tmp_path / "b", **base, cache=tmp_path / "cache.zarr"))
    a, b = read_log(uncached.out_dir / "log.csv"), read_log(cached.out_dir / "log.csv")
    assert [float(r["loss"]) for r in b] == pytest.approx([float(r["loss"]) for r in a], abs=5e-4)


def test_cli_recipe_official(tmp_path, capsys, monkeypatch) -> None:
    """``xmag distill --recipe official``: the recipe's settings under the options given, in config.json."""
    import json

    from napari_xmag.cli import main

    out = tmp_path / "run"
    argv = ["distill", str(CMU1.path), "--out", str(out), "--recipe", "official", "--steps", "1",
            "--batch-size", "2", "--effective-batch", "4", "--stride", "56", "--no-progress",
            "--workers", "0",
            "--stain-norm", "macenko", "--stain-augment", "0.05", "--student-weights", "random",
            "--teacher-weights", "random"]
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"] == "official" and saved["schedule"] == "linear" and saved["jitter_p"] == 0.5
    assert saved["effective_batch"] == 4 and saved["stain_norm"] == "macenko"
    assert saved["stain_augment"] == 0.05
    assert saved["student_weights"] == "random" and saved["seed"] == 42
    assert main(["distill", str(CMU1.path), "--out", str(tmp_path / "x"), "--recipe", "official",
                 "--config", str(out / "config.json")]) == 2
    assert "not both" in capsys.readouterr().err
