"""The official XMAG trainer's checkpoints (PyTorch Lightning ``.ckpt``): ``state_dict`` holds
``student.model.*`` (the trained student), ``student_ema.model.*`` (its EMA: what XMAG releases),
``teacher.model.*`` and the heads one level down, ``student_global_head.projector.{0,1,3}.*`` and
``student_local_head.projector.*``. Built here with those key names, DINOv2 layout inside."""

from __future__ import annotations

import torch

from checkpoints import TINY, dinov2_reference_cls, lightning_checkpoint
from napari_xmag.models import create_model


def test_the_ema_student_and_its_heads_by_default(tmp_path) -> None:
    path = tmp_path / "xmag-epoch9.ckpt"
    student, ema, heads = lightning_checkpoint(path)
    model = create_model("xmag", weights=str(path), tiny=True, heads=True)
    assert "student_ema.model." in model.weights.location and model.weights.heads == "checkpoint"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cls = model.embed(x)
    expected = dinov2_reference_cls(ema, x, num_heads=TINY["num_heads"])
    torch.testing.assert_close(cls, expected, rtol=1e-5, atol=1e-5)  # the EMA's exact features
    not_trained = dinov2_reference_cls(student, x, num_heads=TINY["num_heads"])
    assert not torch.allclose(cls, not_trained, atol=1e-3)
    sd = model.heads.state_dict()
    pairs = (("global", "student_global_head.projector"), ("local", "student_local_head.projector"))
    for ours, theirs in pairs:
        for part in ("0.weight", "1.running_var", "3.bias"):
            assert torch.equal(sd[f"{ours}.{part}"], heads[f"{theirs}.{part}"]), (ours, part)


def test_the_trained_student_when_asked(tmp_path) -> None:
    path = tmp_path / "xmag-epoch9.ckpt"
    student, _, _ = lightning_checkpoint(path)
    model = create_model("xmag", weights=str(path), tiny=True, variant="student")
    assert "'student.model.'" in model.weights.location
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = dinov2_reference_cls(student, x, num_heads=TINY["num_heads"])
        torch.testing.assert_close(model.embed(x), expected, rtol=1e-5, atol=1e-5)
