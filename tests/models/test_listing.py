"""``xmag models``: the zoo with what its model cards say; ``--inspect``: what a file is and
how it would load, without running anything in it."""

from __future__ import annotations

import json

from napari_xmag.cli import main
from napari_xmag.models.registry import list_models


def test_models_lists_the_zoo(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing local
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models()
    by = {r["name"]: r for r in rows}
    assert by["xmag"]["role"] == "student" and by["xmag"]["native_mpp"] == 2.0
    assert by["uni2-h"]["gated"] is True and by["uni2-h"]["params"] == "681M"
    assert by["midnight-12k"]["licence"] == "MIT" and by["midnight-12k"]["embedding"] == "3072-d cls+mean"
    assert all(r["local"] == "-" for r in rows) and by["phikon-v2"]["weights"] == "hf-hub:owkin/phikon-v2"
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["name", "role", "params"] and "h0-mini" in text


def test_inspect_a_training_checkpoint(tmp_path, capsys) -> None:
    from checkpoints import lightning_checkpoint

    path = tmp_path / "xmag-epoch9.ckpt"
    lightning_checkpoint(path)
    assert main(["models", "--inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["backbone_prefixes"]) == {"student.model.", "student_ema.model.", "teacher.model."}
    assert report["head_prefixes"] == ["(top level)"]
    assert report["fits"][0]["model"] == "xmag" and "student_ema.model." in report["fits"][0]["location"]
    assert "tiny=True" in report["load_with"]


def test_inspect_a_hugging_face_folder_runs_none_of_its_code(tmp_path, capsys) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "modeling_evil.py").write_text("raise SystemExit('imported!')\n")
    config = {"model_type": "xmag", "auto_map": {"AutoModel": "modeling_evil.M"}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"wrapper.not_a_vit.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    assert main(["models", "--inspect", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "custom code ['modeling_evil.M'] is never imported" in text
    assert "fits no registered model" in text and "wrapper.not_a_vit.weight" in text
