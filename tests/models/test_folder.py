"""Model folders: a saved model loads back with the same weights and embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from checkpoints import TINY, dinov2_state_dict, heads_state_dict, prefixed, tiny_reference_inputs
from napari_xmag.models import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    create_model,
    read_model_config,
    save_model,
    sha256_file,
)


def test_save_and_load_round_trip(tmp_path):
    dim = TINY["embed_dim"]
    src = tmp_path / "src.pth"
    torch.save({**prefixed(dinov2_state_dict(2, dim, seed=4), "model."), **heads_state_dict(dim, dim)}, src)
    model = create_model("xmag", weights=src, tiny=True)
    folder = save_model(model, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model"] == "xmag" and config["heads"] is True and config["tiny"] is True
    assert read_model_config(folder)["sha256"] == sha256_file(folder / WEIGHTS_NAME)

    again = create_model(folder)
    assert again.weights.source == str(folder) and again.weights.heads == "checkpoint"
    x = tiny_reference_inputs()
    with torch.no_grad():
        assert torch.equal(again.embed(x), model.embed(x))
        assert torch.equal(again.heads["local"](model.embed(x)), model.heads["local"](model.embed(x)))
    # the bare weight file knows its model through its metadata
    assert create_model(folder / WEIGHTS_NAME, tiny=True).spec.name == "xmag"
    with pytest.raises(FileExistsError):
        save_model(model, folder)
    save_model(again, folder, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
