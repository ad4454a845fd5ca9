"""Devices and precisions."""

from __future__ import annotations

import pytest
import torch

from napari_xmag.models import (
    resolve_device,
)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in {"cpu", "mps"}
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="tpu-please"):
        resolve_device("tpu-please")
