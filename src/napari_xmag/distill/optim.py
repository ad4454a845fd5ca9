"""The optimisation recipe: AdamW groups, the learning-rate schedule, and the EMA student.

Two schedules (:data:`SCHEDULES`): ``"warmup-cosine"`` (ours) rises linearly for ``warmup``
steps and then follows a cosine down to ``min_lr`` at the last step; ``"linear"`` is the
released trainer's, ``transformers.get_linear_schedule_with_warmup``: from 0, linearly up to
``lr`` over ``warmup`` steps, then linearly down to 0 at the last step. Its config sets the
warm-up to the whole run (10 epochs of 10), so the rate only ever rises.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["SCHEDULES", "ModelEma", "linear_warmup", "lr_schedule", "param_groups", "warmup_cosine"]

SCHEDULES = ("warmup-cosine", "linear")

# Parameters that are offsets or scales, not weights: no weight decay (as in DINOv2 / timm).
_NO_DECAY_NAMES = ("cls_token", "pos_embed", "reg_token", "gamma")


def param_groups(model: nn.Module, weight_decay: float, *, decay_all: bool = False) -> list[dict]:
    """Two AdamW groups: matrices with ``weight_decay``; biases, norms, tokens and layer scales without.

    ``decay_all``: one group, every parameter decayed (the released trainer's plain AdamW).
    """
    if decay_all:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.split(".")[-1] in _NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, lr: float, min_lr: float):
    """``LambdaLR`` factor for step ``s`` (the step about to be taken, from 0)."""
    floor = min_lr / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def linear_warmup(total_steps: int, warmup_steps: int):
    """``LambdaLR`` factor of ``transformers.get_linear_schedule_with_warmup``, the same formula."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def lr_schedule(name: str, total_steps: int, warmup_steps: int | None, lr: float, min_lr: float):
    """The factor of schedule ``name``; ``warmup_steps=None``: 5% of the run (cosine), all of it (linear)."""
    if name == "linear":
        return linear_warmup(total_steps, total_steps if warmup_steps is None else warmup_steps)
    if name != "warmup-cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {name!r}")
    warmup = warmup_steps if warmup_steps is not None else max(1, round(0.05 * total_steps))
    return warmup_cosine(total_steps, warmup, lr, min_lr)


class ModelEma:
    """An exponential moving average of a model's state (parameters and BatchNorm statistics).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's
    ``ModelEmaV3`` warm-up): with a fixed 0.999 the average would still be three quarters the
    random initialisation after 300 steps, and a short run would export mostly its starting
    point. From about 10 000 updates on the decay is the configured one. ``warmup=False``: the
    configured decay from the first update (the released trainer's).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.is_floating_point():
                target.mul_(d).add_(value.detach().to(target.dtype), alpha=1 - d)
            else:  # counters such as BatchNorm's num_batches_tracked
                target.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
