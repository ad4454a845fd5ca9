"""The configuration of a distillation run: :class:`TrainConfig`.

Plain data (JSON round-trip), checked when made, so a typo fails before any slide is read.
The defaults are the released XMAG recipe: UNI2-h at 20x into the XMAG student
(DINOv2 ViT-B/14) at 5x, AdamW lr 5e-4, weight decay 0.05, EMA 0.999, gradient clipping 1.0,
two views with shared flips and colour jitter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._paths import MAX_LIST_BYTES, file_problem
from ..models.factory import check_overrides
from ..models.precision import check_precision
from .pairs import FIVE_X_SOURCES, PairSettings, SlideEntry, read_slide_list

__all__ = ["CONFIG_FORMAT", "RUNTIME_FIELDS", "TrainConfig"]

#: The ``format`` of the ``config.json`` a run writes (``--config`` takes it back as it is).
CONFIG_FORMAT = "napari-xmag-distill-config"

#: Fields that may change when a run is resumed: they do not change what is computed.
RUNTIME_FIELDS = frozenset({
    "num_workers", "progress", "checkpoint_every", "log_every", "device", "teacher_chunk",
    "cache_workers", "cache_in_memory",
})


@dataclass
class TrainConfig:
    slides: Any  # a folder, a CSV (slide[, mpp_override]) or a list of paths
    out_dir: Path

    teacher: str = "uni2-h"
    teacher_weights: str = "auto"
    teacher_tiny: bool = False
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    student: str = "xmag"
    student_weights: str = "auto"
    student_tiny: bool = False
    student_overrides: dict[str, Any] = field(default_factory=dict)

    epochs: int = 10
    steps: int | None = None  # total optimiser steps; overrides epochs
    batch_size: int = 32  # pairs per step per process; each gives `views` samples
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # None: 5% of the run
    ema_decay: float = 0.999
    clip_grad: float | None = 1.0
    seed: int = 0

    views: int = 2
    flips: bool = True
    jitter: bool | None = None  # None: on without a cache, off with one (see cache.py)

    student_mpp: float = 2.0
    teacher_mpp: float = 0.5
    patch_size: int = 224
    crop_size: int = 224
    stride: int | None = None  # 5x px; None = patch_size (no overlap)
    min_tissue: float = 0.25
    five_x_source: str = "read"

    cache: Path | None = None  # teacher cache (zarr); built on first use
    cache_in_memory: bool = False  # read the whole cache into RAM (small caches, CPU runs)

    holdout: float = 0.0  # fraction of pairs held out by spatial blocks for evaluation
    holdout_block_um: float = 1000.0
    eval_every: int | None = None  # steps; held-out metrics are always taken at start and end

    device: str = "auto"
    # auto: bf16 (or fp16) autocast on CUDA; on a CPU bf16 autocast where the CPU has bf16 units
    # (models/cpu_precision.py), else fp32
    precision: str = "auto"
    num_workers: int = 4
    cache_workers: int = 4
    teacher_chunk: int = 256  # crops per teacher forward
    checkpoint_every: int = 1000
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir).expanduser()
        if self.cache is not None:
            self.cache = Path(self.cache).expanduser()
        if isinstance(self.slides, (list, tuple)):  # plain JSON values: paths or {slide, mpp_override}
            self.slides = [_plain(s) for s in self.slides]
        elif isinstance(self.slides, os.PathLike):
            self.slides = str(self.slides)
        self.slide_entries()  # fails now on no slides, a bad CSV or a missing file
        self.pair_settings()
        self._check()

    def _check(self) -> None:
        positive = {
            "epochs": self.epochs, "batch_size": self.batch_size, "views": self.views,
            "checkpoint_every": self.checkpoint_every, "log_every": self.log_every,
            "teacher_chunk": self.teacher_chunk,
        }
        for name, value in positive.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, least in (("steps", 1), ("eval_every", 1), ("warmup_steps", 0)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= least):
                raise ValueError(f"{name} must be an integer >= {least} or None, got {value!r}")
        if self.num_workers < 0 or self.cache_workers < 0:
            raise ValueError("num_workers and cache_workers cannot be negative")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay cannot be negative, got {self.weight_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive or None, got {self.clip_grad}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout is a fraction in [0, 1), got {self.holdout}")
        check_precision(self.precision, "training")
        if self.five_x_source not in FIVE_X_SOURCES:
            raise ValueError(f"five_x_source must be one of {FIVE_X_SOURCES}, not {self.five_x_source!r}")
        check_overrides(self.teacher_overrides, "teacher_overrides")  # before any slide is read
        check_overrides(self.student_overrides, "student_overrides")
        if self.cache is not None and self.jitter:
            raise ValueError(
                "jitter=True cannot be used with a teacher cache: colour jitter changes the teacher's"
                " output, and the cache holds un-jittered targets. Drop the cache or the jitter."
            )

    # ---- derived -------------------------------------------------------------------------
    @property
    def use_jitter(self) -> bool:
        return self.cache is None if self.jitter is None else bool(self.jitter)

    def slide_entries(self) -> list[SlideEntry]:
        return read_slide_list(self.slides)

    def pair_settings(self) -> PairSettings:
        return PairSettings(
            student_mpp=self.student_mpp, teacher_mpp=self.teacher_mpp, patch_size=self.patch_size,
            crop_size=self.crop_size, stride=self.stride, min_tissue=self.min_tissue,
            five_x_source=self.five_x_source,
        )

    # ---- plain data ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data; :meth:`from_dict` takes it back (with or without the ``format`` key)."""
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["cache"] = None if self.cache is None else str(self.cache)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        data = {k: v for k, v in data.items() if not (k == "format" and v == CONFIG_FORMAT)}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        path = Path(path)
        problem = file_problem(path, max_bytes=MAX_LIST_BYTES)
        if problem:
            raise ValueError(f"{path}: cannot read the training configuration: {problem}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the training configuration: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training configuration is a JSON object")
        return cls.from_dict({**data, **overrides})

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ from ``other`` and change what a run computes."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]}


def _plain(slide: Any) -> Any:
    if isinstance(slide, SlideEntry):
        if slide.mpp_override is None:
            return str(slide.path)
        return {"slide": str(slide.path), "mpp_override": slide.mpp_override}
    return dict(slide) if isinstance(slide, Mapping) else str(slide)
