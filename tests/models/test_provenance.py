"""Random weights stay labelled through what is derived from them: a random model saved and
reloaded, and everything embedded with it, say ``weights_random = True`` and warn."""

from __future__ import annotations

from cases import CMU1
from napari_xmag.cli import main
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features
from napari_xmag.models import create_model, save_model


def test_a_saved_random_model_is_still_random(tmp_path, capsys) -> None:
    model = create_model("xmag", weights="random", tiny=True)
    folder = save_model(model, tmp_path / "saved")
    loaded = create_model(folder)
    assert loaded.weights.random is True and loaded.weights.sha256  # from a file, and random
    out = embed_slide(CMU1.path, loaded, tmp_path / "features", EmbedSettings(device="cpu"), progress=False)
    assert read_features(out.output).attrs["weights_random"] is True
    assert main(["embed", str(CMU1.path), "--model", str(folder), "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err  # the warning, as for --weights random
    assert read_features(tmp_path / "cli" / "CMU-1-Small-Region.h5").attrs["weights_random"] is True


def test_a_saved_random_model_given_as_the_weights_is_still_random(tmp_path, capsys, monkeypatch) -> None:
    """``--model xmag --weights FOLDER``: the folder's record counts as it does for ``--model FOLDER``,
    in the built model, in the plan that skips finished slides, and in the warning."""
    from napari_xmag.models.plan import declared_random, planned_identity

    folder = save_model(create_model("xmag", weights="random", tiny=True), tmp_path / "saved")
    assert create_model("xmag", weights=str(folder), tiny=True).weights.random is True
    assert declared_random("xmag", str(folder)) and declared_random(str(folder))
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")  # tiny architectures; the folder is the weights
    assert planned_identity("xmag", str(folder))["weights_random"] is True
    out = tmp_path / "cli"
    assert main(["embed", str(CMU1.path), "--weights", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    assert read_features(out / "CMU-1-Small-Region.h5").attrs["weights_random"] is True
    assert main(["embed", str(CMU1.path), "--weights", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert "already done" in capsys.readouterr().out  # the plan agrees with what the model wrote


def test_a_model_saved_from_real_weights_is_not_random(tmp_path) -> None:
    import torch

    from checkpoints import TINY, dinov2_state_dict

    path = tmp_path / "weights.pt"
    torch.save(dinov2_state_dict(TINY["depth"], TINY["embed_dim"], seed=3), path)
    model = create_model("xmag", weights=str(path), tiny=True)
    assert model.weights.random is False
    assert create_model(save_model(model, tmp_path / "saved")).weights.random is False


def test_weights_are_identified_by_their_tensors(tmp_path, capsys, monkeypatch) -> None:
    """A re-export of the same tensors (other order, other metadata, another path, .bin) is the
    same weights: the finished slide is skipped; other tensors are not the same weights."""
    import torch
    from safetensors.torch import save_file

    from napari_xmag.models.files import sha256_file, tensors_sha256

    model = create_model("xmag", weights="random", tiny=True)
    sd = {k: v.contiguous() for k, v in model.backbone.state_dict().items()}
    first, again, pickled = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.bin"
    save_file(sd, str(first), metadata={"exported": "monday"})
    save_file(dict(reversed(list(sd.items()))), str(again), metadata={"exported": "tuesday"})
    torch.save(sd, pickled)
    assert sha256_file(first) != sha256_file(again)
    assert tensors_sha256(first) == tensors_sha256(again) == tensors_sha256(pickled)
    loaded = create_model("xmag", weights=str(first), tiny=True)
    assert loaded.weights.tensors_sha256 == tensors_sha256(first)

    monkeypatch.setenv("XMAG_MODELS", "tiny-random")  # tiny architectures; these files are the weights
    out = tmp_path / "features"
    base = ["embed", str(CMU1.path), "--model", "xmag", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main([*base, "--weights", str(first)]) == 0
    written = read_features(out / "CMU-1-Small-Region.h5").attrs
    assert written["weights_tensors_sha256"] == tensors_sha256(first)
    capsys.readouterr()
    for same in (again, pickled):
        assert main([*base, "--weights", str(same)]) == 0
        assert "already done" in capsys.readouterr().out
    sd["cls_token"] = sd["cls_token"] + 1
    other = tmp_path / "other.safetensors"
    save_file(sd, str(other))
    assert main([*base, "--weights", str(other)]) == 2
    assert "made with other settings" in capsys.readouterr().err
