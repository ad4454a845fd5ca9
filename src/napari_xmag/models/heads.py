"""XMAG distillation heads: student width -> teacher width.

Each head is ``Linear -> BatchNorm1d -> GELU -> Linear`` as an ``nn.Sequential`` so that
its state-dict keys are ``0.*``, ``1.*`` (with BN running statistics) and ``3.*``: our model
folders save them as ``heads.global.0.weight``, ...; the official XMAG trainer (PyTorch
Lightning) keeps the same Sequential one level down, ``student_global_head.projector.0.weight``
and ``student_local_head.projector.*`` (read by :mod:`.convert`). The student has a "global"
head (its CLS token against the teacher's CLS) and a "local" head (its patch tokens against the
teacher's).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["HEAD_NAMES", "DistillationHead", "build_heads"]

#: The heads a distilled student carries, in checkpoint order.
HEAD_NAMES: tuple[str, ...] = ("global", "local")


class DistillationHead(nn.Sequential):
    """``Linear(in_dim, hidden) -> BatchNorm1d(hidden) -> GELU -> Linear(hidden, out_dim)``.

    Takes ``(N, in_dim)`` features; tokens ``(B, T, in_dim)`` are flattened to ``(B*T, in_dim)``
    through BatchNorm and reshaped back.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        hidden = out_dim if hidden is None else hidden
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden

    def forward(self, x: Tensor) -> Tensor:  # nn.Sequential names its argument "input"
        if x.ndim == 2:
            return super().forward(x)
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_dim)


def build_heads(in_dim: int, out_dim: int, hidden: int | None = None) -> nn.ModuleDict:
    """The "global" and "local" heads of an XMAG student, freshly initialised."""
    return nn.ModuleDict({name: DistillationHead(in_dim, out_dim, hidden) for name in HEAD_NAMES})
