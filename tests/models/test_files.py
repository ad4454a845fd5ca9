"""Reading weight files: tensors only, never code."""

from __future__ import annotations

import pytest
import torch

from hazards import Payload
from napari_xmag.models import (
    WeightsError,
    create_model,
    load_checkpoint,
)


def test_pickle_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model.cls_token": Payload(marker)}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        load_checkpoint(path)
    with pytest.raises(WeightsError):
        create_model("xmag", weights=path, tiny=True)
    with pytest.raises(WeightsError):
        create_model(path)
    assert not marker.exists()
    # the file really is malicious: a plain unpickling would have run the command
    torch.load(path, weights_only=False)
    assert marker.exists()
