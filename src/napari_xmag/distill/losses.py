"""The XMAG objective: the student at 5x predicts the teacher's 20x view of the same field.

- global: -cos(head_g(student CLS), mean of the teacher's 16 crop CLS vectors), weight 1.0;
- local: the student's 16x16 token grid averaged in 4x4 blocks into 16 tokens (row-major,
  matching the crop order), each compared as -cos(head_l(block), that crop's CLS), weight 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GLOBAL_WEIGHT", "LOCAL_WEIGHT", "DistillLoss", "block_tokens", "distillation_loss"]

GLOBAL_WEIGHT = 1.0
LOCAL_WEIGHT = 0.5


@dataclass
class DistillLoss:
    total: torch.Tensor
    global_: torch.Tensor  # mean -cos over the batch
    local: torch.Tensor  # mean -cos over the batch and the crops


def block_tokens(grid: torch.Tensor, crops_per_side: int = 4) -> torch.Tensor:
    """(B, gh, gw, C) token grid -> (B, n*n, C): means over n x n equal blocks, row-major."""
    b, gh, gw, c = grid.shape
    n = crops_per_side
    if gh % n or gw % n:
        raise ValueError(f"a {gh}x{gw} token grid does not split into {n}x{n} equal blocks")
    blocks = grid.reshape(b, n, gh // n, n, gw // n, c).mean(dim=(2, 4))
    return blocks.reshape(b, n * n, c)


def distillation_loss(
    student_cls: torch.Tensor,
    student_grid: torch.Tensor,
    teacher_cls: torch.Tensor,
    heads: nn.ModuleDict,
    global_weight: float = GLOBAL_WEIGHT,
    local_weight: float = LOCAL_WEIGHT,
) -> DistillLoss:
    """``student_cls`` (B, C), ``student_grid`` (B, gh, gw, C), ``teacher_cls`` (B, n*n, D)
    with the crops in row-major order; ``heads["global"]``/``heads["local"]`` map C -> D."""
    n = round(teacher_cls.shape[1] ** 0.5)
    if n * n != teacher_cls.shape[1]:
        raise ValueError(f"{teacher_cls.shape[1]} teacher crops do not form a square grid")
    target_global = teacher_cls.mean(dim=1)
    pred_global = heads["global"](student_cls)
    loss_global = -F.cosine_similarity(pred_global, target_global, dim=-1).mean()
    pred_local = heads["local"](block_tokens(student_grid, n))
    loss_local = -F.cosine_similarity(pred_local, teacher_cls, dim=-1).mean()
    total = global_weight * loss_global + local_weight * loss_local
    return DistillLoss(total, loss_global, loss_local)
