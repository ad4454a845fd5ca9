"""Building models: random weights only when asked and recorded, every model embeds, inputs checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import ALL, TINY
from napari_xmag.models import (
    UnknownModelError,
    WeightsError,
    XmagModel,
    create_model,
    get_spec,
    save_model,
)


def test_random_weights_only_when_asked_and_recorded():
    model = create_model("xmag", weights="random", tiny=True)
    assert model.weights.random is True and model.weights.sha256 is None
    assert model.weights.source == "random"
    with pytest.raises(WeightsError, match="not an existing file"):
        create_model("xmag", weights="imagenet", tiny=True)
    with pytest.raises(UnknownModelError, match="registered models"):
        create_model("no-such-model", weights="random")


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_and_embeds(name, images, tmp_path):
    spec = get_spec(name)
    model = create_model(name, weights="random", tiny=True)
    assert isinstance(model, XmagModel) and model.spec is spec and not model.training
    x = model.preprocess(images)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    expected = (torch.from_numpy(images[0, 0, 0]).float() / 255 - torch.tensor(spec.mean)) / torch.tensor(
        spec.std
    )
    torch.testing.assert_close(x[0, :, 0, 0], expected)
    with torch.no_grad():
        pooled, grid = model.embed(x, tokens=True)
        assert torch.equal(model(images), pooled)
        feats = model.forward_features(x)
    width = TINY["embed_dim"]
    assert pooled.shape == (2, spec.embed_dim_for(width)) == (2, model.embed_dim)
    # its own storage, not a view of the token output: kept batches must not keep every token
    assert pooled.untyped_storage().nbytes() == pooled.numel() * pooled.element_size()
    assert pooled.dtype == grid.dtype == torch.float32 and torch.isfinite(pooled).all()
    assert grid.shape == (2, *spec.grid, width)
    assert feats.shape == (2, spec.num_prefix_tokens + spec.grid[0] * spec.grid[1], width)
    assert torch.equal(grid.reshape(2, -1, width), feats[:, spec.num_prefix_tokens :])
    if spec.embedding == "cls+mean":
        torch.testing.assert_close(pooled[:, width:], feats[:, spec.num_prefix_tokens :].mean(1))
    # the model folder round trip holds for every architecture
    with torch.no_grad():
        assert torch.equal(create_model(save_model(model, tmp_path / name)).embed(x), pooled)


def test_inputs_are_checked():
    model = create_model("h-optimus-0", weights="random", tiny=True)
    with pytest.raises(ValueError, match="224x224"):
        model.embed(torch.zeros(1, 3, 112, 112))
    with pytest.raises(TypeError, match="uint8"):
        model.preprocess(np.zeros((1, 224, 224, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.preprocess(np.zeros((224, 224, 3), dtype=np.uint8))
    dynamic = create_model("uni2-h", weights="random", tiny=True)  # dynamic_img_size=True
    with torch.no_grad():
        _, grid = dynamic.embed(torch.zeros(1, 3, 112, 140), tokens=True)
    assert grid.shape == (1, 8, 10, TINY["embed_dim"])
