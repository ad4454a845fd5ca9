"""A tiny distillation config: tiny random teacher and student on CMU-1."""

from __future__ import annotations

from pathlib import Path

from cases import CMU1
from napari_xmag.distill import (
    TrainConfig,
)

TINY = {
    "teacher": "uni2-h", "teacher_weights": "random", "teacher_tiny": True,
    "teacher_overrides": {"init_values": 1.0},
    "student": "xmag", "student_weights": "random", "student_tiny": True,
    "student_overrides": {"img_size": 112},
    "patch_size": 112, "crop_size": 112,
    "num_workers": 0, "cache_workers": 0, "progress": False,
}


def tiny_config(out: Path, **changes) -> TrainConfig:
    return TrainConfig(slides=[CMU1.path], out_dir=out, **{**TINY, **changes})
