"""Named starting points of a distillation run: ours and the released trainer's.

``"xmag"`` is :class:`~napari_xmag.distill.config.TrainConfig`'s own defaults. ``"official"``
is what the released code (AI4Path-Lab/XMAG: ``configs/pretrain_mg.yaml``, ``data/``,
``models/distiller.py``) does, setting by setting; docs/distillation.md puts the two side by
side with the reason for each of our differences. What the official recipe cannot reproduce
on fewer devices (BatchNorm statistics over 1152 pairs under ``sync_batchnorm``, per view) is
said there too.
"""

from __future__ import annotations

from typing import Any

from ..models.zoo import DINOV2_VITB14

__all__ = ["BATCH_SCALINGS", "OFFICIAL_BATCH", "RECIPES", "recipe_options"]

#: The released run's batch: 48 pairs per GPU on 24 GPUs, one optimiser step per batch.
OFFICIAL_BATCH = 48 * 24

#: How an effective batch larger than one forward is reached.
BATCH_SCALINGS = ("accumulate", "lr")

RECIPES: dict[str, dict[str, Any]] = {
    "xmag": {},
    "official": {
        "recipe": "official",
        "epochs": 10,
        "effective_batch": OFFICIAL_BATCH,
        "lr": 5e-4,
        "weight_decay": 0.05,
        "decay_all": True,  # plain AdamW over every student and head parameter
        "schedule": "linear",  # get_linear_schedule_with_warmup, warm-up = max_epochs = 10
        "warmup_steps": None,  # the whole run
        "ema_decay": 0.999,
        "ema_warmup": False,
        "clip_grad": 1.0,
        "seed": 42,
        "jitter": True,
        "jitter_p": 0.5,
        "jitter_style": "torchvision",
        "five_x_source": "downsample",  # PIL Lanczos of the 896 px 20x tile
        "student": "xmag",  # its architecture (DINOv2 ViT-B/14 with the heads) ...
        "student_weights": "hf-hub:" + str(DINOV2_VITB14.hf_id),  # ... started from DINOv2's weights
    },
}


def recipe_options(name: str) -> dict[str, Any]:
    """The TrainConfig options of recipe ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
