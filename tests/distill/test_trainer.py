"""Distillation training: the student learns the teacher on held-out tissue, export, resume bit
for bit, the CLI."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from cases import CMU1
from napari_xmag.cli import main
from napari_xmag.distill import (
    TrainError,
    read_log,
    train,
)
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features
from napari_xmag.models import create_model
from tiny_training import tiny_config

# Held-out thresholds (see the module docstring and docs/distillation.md).
THRESHOLDS = {"global_centred_cos": 0.5, "global_r2": 0.3, "local_centred_cos": 0.3, "global_cos": 0.9}


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


# ---- the export -------------------------------------------------------------------------------
def test_export_loads_by_path_with_identical_embeddings(learned, tmp_path) -> None:
    _, result, _ = learned
    export = result.export_dir
    assert (export / "model.safetensors").exists() and (export / "distillation.json").exists()
    loaded = create_model(export)
    assert loaded.heads is not None and loaded.weights.heads == "checkpoint"
    # distilled from a random teacher: the student learned noise, and says so wherever it goes
    assert loaded.weights.random is True
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
    assert read_features(from_folder.output).attrs["weights_random"] is True


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


def test_cli_distill_with_a_config_file(tmp_path, capsys) -> None:
    # bf16 autocast on the CPU: the mixed-precision path of the step and of the teacher
    config = tiny_config(tmp_path / "run", stride=56, steps=2, batch_size=2, views=1, warmup_steps=0,
                         precision="bf16")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({k: v for k, v in config.to_dict().items() if k not in ("out_dir", "slides")}))
    assert main(["distill", str(CMU1.path), "--out", str(tmp_path / "run"), "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "distilled 2 steps" in out and (tmp_path / "run" / "student" / "config.json").exists()
    with (tmp_path / "run" / "log.csv").open(newline="") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["2"]
    # the same folder again: one line, exit 2, no traceback
    assert main(["distill", str(CMU1.path), "--out", str(tmp_path / "run"), "--config", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "x")]) == 2
