"""The XMAG losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_xmag.distill.losses import block_tokens, distillation_loss


def test_block_tokens_are_row_major_block_means() -> None:
    grid = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 16, 16, 1)
    blocks = block_tokens(grid)[0, :, 0]
    # block (r, c) covers rows 4r..4r+3 and columns 4c..4c+3; its mean is the centre value
    expected = torch.tensor([(4 * r + 1.5) * 16 + 4 * c + 1.5 for r in range(4) for c in range(4)])
    torch.testing.assert_close(blocks, expected)
    with pytest.raises(ValueError, match="does not split"):
        block_tokens(torch.zeros(1, 15, 15, 2))


def test_loss_is_minus_cosine_weighted() -> None:
    heads = nn.ModuleDict({"global": nn.Identity(), "local": nn.Identity()})
    teacher = torch.randn(2, 16, 8)
    student_cls = teacher.mean(1)  # perfect global prediction
    grid = teacher.reshape(2, 4, 4, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)  # perfect local
    loss = distillation_loss(student_cls, grid, teacher, heads)
    torch.testing.assert_close(loss.global_, torch.tensor(-1.0))
    torch.testing.assert_close(loss.local, torch.tensor(-1.0))
    torch.testing.assert_close(loss.total, torch.tensor(-1.5))
    opposite = distillation_loss(-student_cls, -grid, teacher, heads)
    torch.testing.assert_close(opposite.total, torch.tensor(1.5))
