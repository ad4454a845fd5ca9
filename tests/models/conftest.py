"""Fixtures of the model tests: a full-size XMAG checkpoint, images, an offline hub."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import dinov2_state_dict, prefixed


@pytest.fixture(scope="module")
def full_xmag_checkpoint(tmp_path_factory):
    """The released layout: the full-size ViT-B/14 backbone under ``model.``, as a .pth."""
    sd = dinov2_state_dict(depth=12, dim=768, seed=0)
    path = tmp_path_factory.mktemp("xmag") / "xmag_ema.pth"
    torch.save(prefixed(sd, "model."), path)
    return path, sd


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home
