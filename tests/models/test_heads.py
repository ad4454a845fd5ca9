"""The XMAG distillation heads: their layout, and loading them from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from checkpoints import TINY, XMAG, dinov2_state_dict, heads_state_dict, prefixed
from napari_xmag.models import (
    HEAD_NAMES,
    DistillationHead,
    create_model,
    get_spec,
    head_dims,
)


@pytest.mark.parametrize(
    ("names", "counter"),
    [
        (("head_g", "head_l"), True),
        (("global_head", "local_head"), False),
        (("head_global", "head_local"), True),
    ],
)
def test_distillation_heads_are_loaded(tmp_path, names, counter):
    dim = TINY["embed_dim"]
    hd = heads_state_dict(dim, dim, names=names, counter=counter)
    path = tmp_path / "with_heads.safetensors"
    from safetensors.torch import save_file

    save_file(prefixed({**prefixed(dinov2_state_dict(2, dim), "model."), **hd}, ""), str(path))
    model = create_model("xmag", weights=path, tiny=True)
    assert model.weights.heads == "checkpoint"
    assert list(model.heads) == list(HEAD_NAMES)
    for ours, theirs in zip(HEAD_NAMES, names, strict=True):
        head = model.heads[ours]
        assert torch.equal(head[0].weight, hd[f"{theirs}.0.weight"])
        assert torch.equal(head[1].running_mean, hd[f"{theirs}.1.running_mean"])
        assert torch.equal(head[3].bias, hd[f"{theirs}.3.bias"])
        assert int(head[1].num_batches_tracked) == (1234 if counter else 0)
    # heads=False leaves them out; the backbone is the same
    plain = create_model("xmag", weights=path, tiny=True, heads=False)
    assert plain.heads is None


def test_heads_have_the_xmag_layout():
    head = DistillationHead(768, 1536)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "0.weight": (1536, 768),
        "0.bias": (1536,),
        "1.weight": (1536,),
        "1.bias": (1536,),
        "1.running_mean": (1536,),
        "1.running_var": (1536,),
        "1.num_batches_tracked": (),
        "3.weight": (1536, 1536),
        "3.bias": (1536,),
    }
    head.eval()
    assert head(torch.randn(2, 5, 768)).shape == (2, 5, 1536)
    assert head_dims(XMAG) == (768, 1536)  # the student's width -> UNI2-h's
    assert head_dims(XMAG, tiny=True) == (TINY["embed_dim"], get_spec("uni2-h").tiny_kwargs["embed_dim"])
    with pytest.raises(ValueError, match="not a distilled student"):
        create_model("uni", weights="random", tiny=True, heads=True)
