"""Checkpoint key conversion: official layouts load bit-exactly and match a reference forward;
wrong ones are refused with the keys."""

from __future__ import annotations

import pytest
import torch

from checkpoints import (
    TINY,
    XMAG,
    dinov2_interpolate_pos_encoding,
    dinov2_reference_cls,
    dinov2_state_dict,
    heads_state_dict,
    prefixed,
    tiny_reference_inputs,
)
from napari_xmag.models import (
    WeightsError,
    build_backbone,
    convert_checkpoint,
    create_model,
    dinov2_interpolate_pos_embed,
    get_spec,
    load_checkpoint,
    sha256_file,
)


def test_pos_embed_resampling_is_dinov2s_runtime_rule():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    tokens = torch.zeros(1, 1 + 16 * 16, 8)
    reference = dinov2_interpolate_pos_encoding(pos, tokens, 224, 224, 14)
    ours = dinov2_interpolate_pos_embed(pos, (16, 16))
    assert torch.equal(ours, reference)
    naive = dinov2_interpolate_pos_encoding(pos, tokens, 224, 224, 14, naive=True)
    assert not torch.allclose(ours, naive, atol=1e-3)  # size=(16, 16) samples elsewhere


def test_full_size_xmag_checkpoint_matches_dinov2_forward(full_xmag_checkpoint, images):
    images = images[:1]  # one image: a full ViT-B forward costs seconds on a small CPU
    path, sd = full_xmag_checkpoint
    backbone = build_backbone(XMAG, device="meta")
    converted = convert_checkpoint(load_checkpoint(path), backbone, XMAG)
    # strict: every key of the timm model, nothing more, same shapes
    target = backbone.state_dict()
    assert set(converted.backbone) == set(target)
    assert all(converted.backbone[k].shape == target[k].shape for k in target)
    assert set(sd) - set(converted.backbone) == {"mask_token"}
    assert "prefix 'model.'" in converted.location
    assert any("37x37 -> 16x16" in note for note in converted.notes)

    model = create_model("xmag", weights=path)
    assert model.weights.random is False
    assert model.weights.sha256 == sha256_file(path)
    assert model.heads is None
    x = model.preprocess(images)
    with torch.no_grad():
        ours = model.embed(x)
        reference = dinov2_reference_cls(sd, x, num_heads=12)
        naive = dinov2_reference_cls(sd, x, num_heads=12, naive=True)
    assert ours.shape == (1, 768) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # the test can fail: resampling with size=(16, 16) gives another embedding
    assert (naive - reference).abs().max() > 1e-3
    assert not torch.allclose(ours, naive, atol=1e-4)


def test_bare_checkpoint_file_is_identified_as_xmag(full_xmag_checkpoint):
    path, _ = full_xmag_checkpoint
    model = create_model(path)  # no name: keys and shapes pick the registry entry
    assert model.spec.name == "xmag"
    assert model.weights.source == str(path)


@pytest.mark.parametrize(
    ("layout", "wrap"),
    [
        ("flat", lambda sd, hd: sd),
        ("module-prefix", lambda sd, hd: prefixed(sd, "module.")),
        ("nested-state_dict", lambda sd, hd: {"state_dict": prefixed(sd, "backbone."), "epoch": 7}),
        (
            "student-and-teacher",
            lambda sd, hd: {
                "teacher": prefixed(dinov2_state_dict(2, 48, seed=5), "backbone."),  # wrong width
                "student": {**prefixed(sd, "backbone."), **hd},
                "iteration": 100,
            },
        ),
        ("chunked", None),
    ],
)
def test_tiny_dinov2_layouts_load_and_match(tmp_path, layout, wrap):
    depth, dim, heads = TINY["depth"], TINY["embed_dim"], TINY["num_heads"]
    sd = dinov2_state_dict(depth, dim, seed=3, chunks=2 if layout == "chunked" else 0)
    flat = dinov2_state_dict(depth, dim, seed=3)
    ckpt = prefixed(sd, "student.backbone.") if wrap is None else wrap(sd, heads_state_dict(dim, dim))
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    model = create_model("xmag", weights=path, tiny=True)
    x = tiny_reference_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed(x), dinov2_reference_cls(flat, x, num_heads=heads), atol=1e-5, rtol=1e-5
        )
    assert (model.heads is not None) == (layout == "student-and-teacher")


def test_wrong_architecture_is_refused_with_the_offending_keys(tmp_path):
    # full size: UNI (ViT-L/16) shapes against the XMAG ViT-B/14, checked without memory
    uni_sd = build_backbone(get_spec("uni"), device="meta").state_dict()
    with pytest.raises(WeightsError) as info:
        convert_checkpoint(uni_sd, build_backbone(XMAG, device="meta"), XMAG, source="uni.bin")
    text = str(info.value)
    assert "'xmag'" in text and "unexpected keys" in text and "blocks.12." in text
    assert "patch_embed.proj.weight: checkpoint (1024, 3, 16, 16) vs model (768, 3, 14, 14)" in text
    # and through create_model with a real (tiny) UNI-shaped file
    uni = create_model("uni", weights="random", tiny=True)
    path = tmp_path / "uni_tiny.pth"
    torch.save(uni.backbone.state_dict(), path)
    with pytest.raises(WeightsError, match=r"patch_embed\.proj\.weight: checkpoint \(32, 3, 16, 16\)"):
        create_model("xmag", weights=path, tiny=True)
    torch.save({"foo": torch.zeros(3)}, tmp_path / "nothing.pt")
    with pytest.raises(WeightsError, match="no ViT backbone"):
        create_model("xmag", weights=tmp_path / "nothing.pt", tiny=True)


def test_unknown_bare_checkpoint_says_which_models_were_tried(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save(prefixed(dinov2_state_dict(2, 32), "model."), path)  # tiny: no full-size entry fits
    with pytest.raises(
        WeightsError, match=r"matches no registered model .*create_model\(NAME, weights=PATH\)"
    ):
        create_model(path)
