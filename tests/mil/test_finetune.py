"""Fine-tuning the student under MIL: end to end and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from colour_slides import tiny_student
from napari_xmag.cli import main
from napari_xmag.mil import (
    load_abmil,
    read_attention,
)
from napari_xmag.models import create_model, save_model


# ---- end to end ---------------------------------------------------------------------------------
def test_finetune_end_to_end(colour_set, tmp_path, capsys, monkeypatch) -> None:
    """Tiny student and teacher, 4 slides, 2 folds, 1 epoch: 4 steps of 3 patches each."""
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    csv = tmp_path / "labels.csv"
    rows = [f"{colour_set / f's{i}.svs'},{'pink' if i % 2 == 0 else 'purple'}" for i in range(4)]
    csv.write_text("\n".join(["slide,label", *rows]) + "\n")  # slides as absolute paths
    original = tiny_student(heads=True)
    save_model(original, tmp_path / "student")
    out = tmp_path / "ft"
    args = ["finetune", "--csv", str(csv), "--out", str(out), "--student", str(tmp_path / "student"),
            "--teacher-weights", "random", "--blocks", "1", "--epochs", "1", "--max-patches", "2",
            "--folds", "2", "--workers", "1", "--device", "cpu"]
    assert main([*args, "--lambda", "1.0"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS (teacher)" in captured.err and "4 slides, 2 folds" in captured.out
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert len(steps) == 4 and all(s["patches"] == 2 for s in steps)
    for s in steps:  # every term finite, the distillation term included
        assert all(np.isfinite([s["loss"], s["ce"], s["distill"]]))
        assert s["loss"] == pytest.approx(s["ce"] + 1.0 * s["distill"], abs=1e-5)
        assert s["distill"] != 0.0
    assert len(list((out / "teacher_cache").glob("*.zarr"))) == 4  # the one teacher-target cache
    # the saved student loads; only the last block (and norm, heads) moved
    tuned = create_model(out / "fold0" / "student")
    before, after = original.state_dict(), tuned.state_dict()
    frozen, trained = "backbone.blocks.0.attn.qkv.weight", "backbone.blocks.1.attn.qkv.weight"
    assert torch.equal(before[frozen], after[frozen])
    assert not torch.equal(before[trained], after[trained])
    assert tuned.heads is not None
    assert load_abmil(out / "fold1" / "abmil.safetensors")[1] == ["pink", "purple"]
    for i in range(4):
        att = read_attention(out / "attention" / f"s{i}.h5")
        assert att.attrs["method"] == "finetune" and att.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert report["memory"]["activation_bytes_estimate"] > 0
    # the same run without the teacher: same cross-entropy at the first step, another total
    assert main([*args, "--lambda", "1.0"]) == 2  # a finished run is not overwritten
    assert "holds a finished run" in capsys.readouterr().err
    # (with gradient checkpointing, which recomputes the same values and still trains the block)
    assert main([*args, "--lambda", "0", "--checkpointing", "--out", str(tmp_path / "ce")]) == 0
    plain = json.loads((tmp_path / "ce" / "report.json").read_text())["steps"]
    assert plain[0]["ce"] == pytest.approx(steps[0]["ce"], abs=1e-6)
    assert plain[0]["distill"] == 0.0 and plain[0]["loss"] != pytest.approx(steps[0]["loss"], abs=1e-6)
    assert not (tmp_path / "ce" / "teacher_cache").exists()
    moved = create_model(tmp_path / "ce" / "fold0" / "student").state_dict()
    assert not torch.equal(before[trained], moved[trained])


def test_finetune_errors(colour_set, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,label\ns0,pink\ns1,purple\nnowhere,pink\ns3,purple\n")
    rc = main(["finetune", "--csv", str(csv), "--slides", str(colour_set), "--out", str(tmp_path / "o"),
               "--folds", "2", "--student-weights", "random", "--teacher-weights", "random"])
    err = capsys.readouterr().err
    assert rc == 2 and "1 slide(s) not found" in err and "nowhere" in err and err.count("\n") == 1
