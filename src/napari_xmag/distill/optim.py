"""The optimisation recipe: AdamW groups, warm-up then cosine decay, and the EMA student.

The released XMAG schedule warms up and then never decays; here the learning rate rises
linearly for ``warmup`` steps and then follows a cosine down to ``min_lr`` at the last step.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["ModelEma", "param_groups", "warmup_cosine"]

# Parameters that are offsets or scales, not weights: no weight decay (as in DINOv2 / timm).
_NO_DECAY_NAMES = ("cls_token", "pos_embed", "reg_token", "gamma")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices with ``weight_decay``; biases, norms, tokens and layer scales without."""
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


class ModelEma:
    """An exponential moving average of a model's state (parameters and BatchNorm statistics).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's
    ``ModelEmaV3`` warm-up): with a fixed 0.999 the average would still be three quarters the
    random initialisation after 300 steps, and a short run would export mostly its starting
    point. From about 10 000 updates on the decay is the configured one.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
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
