"""The configuration of a distillation run: :class:`TrainConfig`.

Plain data (JSON round-trip), checked when made, so a typo fails before any slide is read.
The defaults are our recipe (``recipe="xmag"``): UNI2-h at 20x into the XMAG student
(DINOv2 ViT-B/14) at 5x, AdamW lr 5e-4, weight decay 0.05, EMA 0.999, gradient clipping 1.0,
two views with shared flips and colour jitter. ``TrainConfig.from_recipe("official", ...)``
starts from the released trainer's settings instead (:mod:`~napari_xmag.distill.recipes`).
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
from .optim import SCHEDULES
from .pairs import FIVE_X_SOURCES, PairSettings, SlideEntry, check_jitter, read_slide_list
from .recipes import BATCH_SCALINGS, recipe_options

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

    recipe: str = "xmag"  # what the defaults came from: "xmag" (ours) or "official" (from_recipe)
    epochs: int = 10
    steps: int | None = None  # total optimiser steps; overrides epochs
    batch_size: int = 32  # pairs per forward per process; each gives `views` samples
    # pairs per optimiser step over all processes; None: batch_size x processes. Reached by
    # gradient accumulation, or (batch_scaling="lr") by scaling lr by the real batch / this one
    effective_batch: int | None = None
    batch_scaling: str = "accumulate"
    lr: float = 5e-4  # at effective_batch
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    decay_all: bool = False  # weight decay on every parameter, biases and norms too (released)
    schedule: str = "warmup-cosine"  # or "linear" (released; see optim.py)
    warmup_steps: int | None = None  # None: 5% of the run (warmup-cosine), all of it (linear)
    ema_decay: float = 0.999
    ema_warmup: bool = True  # timm's EMA warm-up; False: the constant decay from step 1 (released)
    clip_grad: float | None = 1.0
    seed: int = 0

    views: int = 2
    flips: bool = True
    jitter: bool | None = None  # None: on without a cache, off with one (see cache.py)
    jitter_p: float = 1.0  # chance a view is jittered (released: 0.5)
    jitter_style: str = "shared"  # or "torchvision" (released; see augment.py)
    stain_augment: float = 0.0  # HED stain augmentation strength (sigma; 0.05 is "HED-light")

    student_mpp: float = 2.0
    teacher_mpp: float = 0.5
    patch_size: int = 224
    crop_size: int = 224
    stride: int | None = None  # 5x px; None = patch_size (no overlap)
    min_tissue: float = 0.25
    five_x_source: str = "read"
    stain_norm: str = "none"  # none, macenko or reinhard: both magnifications, fitted once per slide
    stain_reference: str | None = None  # an image to normalise to; None: the bundled default

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
        check_jitter(self.jitter_p, self.jitter_style)
        if not 0 <= self.stain_augment < 1:
            raise ValueError(f"stain_augment is a strength in [0, 1), got {self.stain_augment!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.batch_scaling not in BATCH_SCALINGS:
            raise ValueError(f"batch_scaling must be one of {BATCH_SCALINGS}, not {self.batch_scaling!r}")
        if self.effective_batch is not None and not (isinstance(self.effective_batch, int)
                                                     and self.effective_batch >= 1):
            raise ValueError(f"effective_batch must be a positive integer or None: {self.effective_batch!r}")
        self.accumulation(1)  # an effective batch that no batch_size divides fails now

    # ---- derived -------------------------------------------------------------------------
    @property
    def use_jitter(self) -> bool:
        """Colour jitter on? ``jitter=None``: on without a cache; with one only when ``jitter_p < 1``
        (at 1 the cache could serve no view: every one would run the teacher)."""
        if self.jitter is None:
            return self.cache is None or self.jitter_p < 1
        return bool(self.jitter)

    def accumulation(self, world_size: int) -> int:
        """Forward passes per optimiser step on ``world_size`` processes."""
        real = self.batch_size * world_size
        if self.effective_batch is None or self.batch_scaling == "lr" or self.effective_batch == real:
            return 1
        if self.effective_batch % real:
            raise ValueError(
                f"an effective batch of {self.effective_batch} pairs is not a whole number of batches of"
                f" {self.batch_size} pairs x {world_size} process(es); choose a batch size that divides"
                " it, or batch_scaling='lr'"
            )
        return self.effective_batch // real

    def step_lr(self, world_size: int) -> float:
        """The peak learning rate: ``lr``, scaled linearly to the real batch if ``batch_scaling='lr'``."""
        if self.effective_batch is None or self.batch_scaling != "lr":
            return self.lr
        return self.lr * self.batch_size * world_size / self.effective_batch

    @classmethod
    def from_recipe(cls, recipe: str, **options: Any) -> TrainConfig:
        """A configuration that starts from ``recipe`` ("xmag" or "official"); ``options`` win."""
        return cls(**{**recipe_options(recipe), **options})

    def slide_entries(self) -> list[SlideEntry]:
        return read_slide_list(self.slides)

    def pair_settings(self) -> PairSettings:
        return PairSettings(
            student_mpp=self.student_mpp, teacher_mpp=self.teacher_mpp, patch_size=self.patch_size,
            crop_size=self.crop_size, stride=self.stride, min_tissue=self.min_tissue,
            five_x_source=self.five_x_source, stain_norm=self.stain_norm,
            stain_reference=self.stain_reference,
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
