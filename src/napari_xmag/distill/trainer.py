"""Distillation training: the 5x student learns to predict the frozen 20x teacher.

``train(config)`` runs a whole run in one process, or in each process of a ``torchrun``
launch (``WORLD_SIZE > 1``: DDP, a ``DistributedSampler`` share of each epoch per rank;
rank 0 alone logs, evaluates, checkpoints and exports). One step:

1. a batch of pairs, each in ``views`` augmented views (:class:`PairDataset`);
2. the teacher's 16 crop CLS vectors per view, frozen, in inference mode (or the cache's);
3. the student's CLS and token grid at 5x, through its global and local heads, against
   them (:func:`distillation_loss`: global 1.0, local 0.5);
4. AdamW with gradient clipping, mixed precision on GPU, warm-up then cosine decay, and an
   EMA of the student, which is what is exported.

The output folder holds ``config.json``, ``checkpoint.pt`` (the latest, for ``resume``),
``log.csv``, ``tensorboard/``, ``metrics.json`` (held-out evaluation, when asked) and
``student/``, the EMA student with both heads, loadable by ``create_model`` wherever a
model is accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .._atomic import ANY_FILE, OutputKind, atomic_path, check_target, read_small_json, write_json
from ..models import create_model, head_dims, resolve_device, save_model
from ..models.folder import MODEL_FOLDER_KIND
from ..models.precision import training_autocast
from ..provenance import model_identity
from .cache import TeacherCache, build_teacher_cache
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KIND,
    CHECKPOINT_NAME,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import CONFIG_FORMAT, TrainConfig
from .evaluate import (
    Alignment,
    constant_alignment,
    evaluate_student,
    read_eval_set,
    spatial_split,
    training_means,
)
from .losses import distillation_loss
from .optim import ModelEma, lr_schedule, param_groups
from .order import ResumableSampler
from .pairs import PairDataset, PairIndex
from .runlog import LOG_KIND, TENSORBOARD_KIND, RunLog
from .teacher import autocast, embed_crops, freeze

log = logging.getLogger(__name__)

__all__ = ["EXPORT_NAME", "NoPairsError", "TrainError", "TrainResult", "train"]

EXPORT_NAME = "student"
# Training pairs whose teacher targets give the baseline's training mean, and held-out pairs
# kept in memory for evaluation (at 224 px: 150 KB each, 600 MB).
_MEAN_PAIRS = 2048
_EVAL_PAIRS = 4096

Resume = bool | str | os.PathLike[str]


class TrainError(ValueError):
    """A run cannot start as asked (an existing run, a missing or mismatched checkpoint)."""


class NoPairsError(TrainError):
    """The slides hold too few tissue pairs for one batch."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # the step the run stopped at
    total_steps: int
    export_dir: Path | None  # None when stopped before the end, or not rank 0
    metrics: dict[str, Any] | None  # held-out evaluation (metrics.json), when holdout > 0
    ema: nn.Module  # the EMA student (what is exported)
    student: nn.Module
    rank: int = 0  # of a torchrun launch; only rank 0 exports and reports

    @property
    def finished(self) -> bool:
        return self.steps >= self.total_steps


def train(
    config: TrainConfig, *, resume: Resume = False, stop_at: int | None = None, overwrite: bool = False
) -> TrainResult:
    """Run (or continue) the distillation described by ``config``.

    ``resume``: True continues from ``out_dir/checkpoint.pt``, a path from that checkpoint; the
    continued run computes exactly what the uninterrupted one would (same data order, same
    augmentations, same optimiser and random states). A fresh run refuses an ``out_dir`` that
    holds an earlier run's outputs, or files of the same names that no run wrote, unless
    ``overwrite`` (other files there are never touched). ``stop_at``: checkpoint and return once
    the run reaches this step (a time-limited job; resume it later).
    """
    dist = _setup_distributed(config.device)
    try:
        return _Run(config, dist, resume, overwrite).run(stop_at)
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


# ---- devices and processes ------------------------------------------------------------------
@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def _setup_distributed(device: str) -> _Dist:
    """One process, or one rank of a torchrun launch (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(0, 1, resolve_device(device))

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = resolve_device("cpu" if device == "auto" else device), "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)
    return _Dist(dist.get_rank(), dist.get_world_size(), dev, owns)


# ---- pieces of a step ---------------------------------------------------------------------------
class _DistillStep(nn.Module):
    """Student forward, heads and loss in one module, so that DDP sees every parameter used."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls, grid = self.student.embed(x, tokens=True)
        loss = distillation_loss(cls, grid, target, self.student.heads)
        return loss.total, loss.global_, loss.local


class _HeldOut:
    """The held-out images and teacher targets, and the training mean, read once.

    At most ``_EVAL_PAIRS`` held-out pairs (an even sample) are kept in memory; the training
    mean comes from at most ``_MEAN_PAIRS`` training pairs.
    """

    def __init__(self, train: PairIndex, held: PairIndex, teacher: Any, cache: Any, config: TrainConfig,
                 amp: torch.dtype | None) -> None:
        kwargs = {"num_workers": config.num_workers, "amp_dtype": amp, "cache": cache,
                  "chunk": config.teacher_chunk}
        _, train_targets = read_eval_set(teacher, _even_sample(train, _MEAN_PAIRS), images=False, **kwargs)
        self.means = training_means(train_targets)
        self.images, self.targets = read_eval_set(teacher, _even_sample(held, _EVAL_PAIRS), **kwargs)
        self.baseline = constant_alignment(self.targets, self.means)
        self.batch_size, self.amp = config.batch_size, amp

    def __call__(self, model: Any) -> Alignment:
        return evaluate_student(model, self.images, self.targets, self.means,
                                batch_size=self.batch_size, amp_dtype=self.amp)


def _even_sample(index: PairIndex, count: int) -> PairIndex:
    if len(index) <= count:
        return index
    return index.subset(np.linspace(0, len(index) - 1, count).round().astype(np.int64))


# ---- the run ------------------------------------------------------------------------------------
class _Run:
    """One run's state: data, models, optimisation, logs; built, resumed, stepped, saved."""

    def __init__(self, config: TrainConfig, dist: _Dist, resume: Resume, overwrite: bool = False) -> None:
        self.config, self.dist, self.out = config, dist, config.out_dir
        state = _resume_state(config, resume)
        if state is None:
            _check_fresh_outputs(config, resume, overwrite)
        self.overwrite = overwrite
        self.device = dist.device
        self.amp, use_scaler = training_autocast(config.precision, self.device)

        index = PairIndex.build(config.slide_entries(), config.pair_settings())
        if config.holdout > 0:
            train_pos, held_pos = spatial_split(index, config.holdout, config.holdout_block_um, config.seed)
        else:
            train_pos, held_pos = np.arange(len(index)), np.zeros(0, np.int64)
        self.train_index, self.held_index = index.subset(train_pos), index.subset(held_pos)

        torch.manual_seed(config.seed)  # fresh heads on loaded weights draw from the global generator
        self.teacher = freeze(create_model(
            config.teacher, config.teacher_weights, tiny=config.teacher_tiny,
            overrides=config.teacher_overrides, device=self.device,
        ))
        self.student = create_model(
            config.student, config.student_weights, tiny=config.student_tiny,
            overrides=config.student_overrides, device=self.device, heads=True,
        )
        _check_heads(self.student, self.teacher, config)
        self.cache = _prepare_cache(config, index, self.teacher, dist, self.amp) if config.cache else None
        self._data()

        self.student.train()
        self.step_module: nn.Module = _DistillStep(self.student)
        if dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.student, config.weight_decay, decay_all=config.decay_all),
            lr=config.step_lr(dist.world_size),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_schedule(config.schedule, self.total, config.warmup_steps, config.step_lr(dist.world_size),
                        config.min_lr),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.ema = ModelEma(self.student, config.ema_decay, warmup=config.ema_warmup)
        self.step = 0
        if state is not None:
            self._load(state)
        elif dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(self.out / "config.json", {"format": CONFIG_FORMAT, **config.to_dict()},
                        overwrite=self.overwrite)

    def _data(self) -> None:
        config, dist = self.config, self.dist
        self.dataset = PairDataset(
            self.train_index, views=config.views, flips=config.flips, jitter=config.use_jitter,
            seed=config.seed, cache=self.cache, jitter_p=config.jitter_p, jitter_style=config.jitter_style,
            stain_sigma=config.stain_augment,
        )
        coloured = config.use_jitter or config.stain_augment > 0
        if self.cache is not None and coloured and config.jitter_p >= 1:
            log.warning("every view is jittered (jitter_p = 1): the teacher cache serves no target, and"
                        " the teacher runs on every view")
        self.accum = config.accumulation(dist.world_size)
        self.sampler = ResumableSampler(
            len(self.dataset), config.batch_size, seed=config.seed, rank=dist.rank, world_size=dist.world_size
        )
        # optimiser steps per epoch; the batches past the last whole step of an epoch are dropped
        self.per_epoch = self.sampler.batches_per_epoch // self.accum
        if self.per_epoch == 0:
            raise NoPairsError(
                f"{len(self.train_index)} training pairs make no step of {config.batch_size * self.accum}"
                f" pairs on each of {dist.world_size} process(es); lower batch_size (or effective_batch),"
                " use a smaller stride or add slides"
            )
        self.total = config.steps or config.epochs * self.per_epoch
        self.loader = DataLoader(
            self.dataset, batch_size=config.batch_size, sampler=self.sampler, num_workers=config.num_workers,
            drop_last=True, persistent_workers=config.num_workers > 0, pin_memory=self.device.type == "cuda",
            # its own generator: worker seeds must not draw from (and shift) the global one
            generator=torch.Generator().manual_seed(config.seed),
        )

    # ---- checkpoints ---------------------------------------------------------------------
    def _load(self, state: dict[str, Any]) -> None:
        if (state["batches_per_epoch"], state["world_size"]) != (self.per_epoch, self.dist.world_size):
            raise TrainError(
                f"cannot resume exactly: the checkpoint ran {state['world_size']} process(es) with"
                f" {state['batches_per_epoch']} optimiser steps per epoch, this run {self.dist.world_size}"
                f" with {self.per_epoch}"
            )
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    def _save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.out / CHECKPOINT_NAME, {
                "format": CHECKPOINT_FORMAT, "step": self.step, "total_steps": self.total,
                "batches_per_epoch": self.per_epoch, "world_size": self.dist.world_size,
                "config": self.config.to_dict(), "student": self.student.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": get_rng_state(),
            })
        self.dist.barrier()

    # ---- one step ------------------------------------------------------------------------
    def _targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's (B*V, n*n, D) targets: from the cache, the live teacher, or both."""
        chunk = self.config.teacher_chunk
        if "target" not in batch:
            crops = batch["teacher"].flatten(0, 1).to(self.device, non_blocking=True)
            return embed_crops(self.teacher, crops, chunk=chunk, amp_dtype=self.amp)
        target = batch["target"].flatten(0, 1).to(self.device, non_blocking=True)
        if "live" in batch:  # jittered views: the cache holds no target for them
            live = batch["live"].flatten().to(self.device)
            if bool(live.any()):
                crops = batch["teacher"].flatten(0, 1).to(self.device, non_blocking=True)[live]
                live_target = embed_crops(self.teacher, crops, chunk=chunk, amp_dtype=self.amp)
                target[live] = live_target.to(target.dtype)
        return target

    def _forward_backward(self, batch: dict[str, Any], last: bool) -> torch.Tensor:
        """One batch's share of a step's gradient; returns (loss, global, local) / accumulation."""
        target = self._targets(batch)
        x = self.student.preprocess(batch["student"].flatten(0, 1))
        # DDP reduces the gradients once a step, at its last batch
        sync = last or not hasattr(self.step_module, "no_sync")
        with contextlib.nullcontext() if sync else self.step_module.no_sync():
            with autocast(self.device, self.amp):
                loss, loss_g, loss_l = self.step_module(x, target)
            self.scaler.scale(loss / self.accum).backward()
        return torch.stack([loss.detach(), loss_g.detach(), loss_l.detach()]).double() / self.accum

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> torch.Tensor:
        """One optimiser step over ``accum`` batches; returns (loss, global, local, grad norm), detached."""
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.zeros(3, dtype=torch.float64, device=self.device)
        for k in range(self.accum):
            losses += self._forward_backward(next(batches), last=k == self.accum - 1)
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = nn.utils.clip_grad_norm_(self.student.parameters(), self.config.clip_grad or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.student)
        self.step += 1
        return torch.cat([losses, grad_norm.detach().double().reshape(1)])

    # ---- the loop --------------------------------------------------------------------------
    def run(self, stop_at: int | None) -> TrainResult:
        config, dist, out = self.config, self.dist, self.out
        runlog = RunLog(out, enabled=dist.main, start_step=self.step, total_steps=self.total,
                        progress=config.progress)
        held, metrics = self._start_evaluation(runlog) if dist.main and len(self.held_index) else (None, None)
        dist.barrier()
        stop = min(self.total, stop_at) if stop_at is not None else self.total
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, global, local, grad norm
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < stop:
                epoch = self.step // self.per_epoch
                self.sampler.set_epoch(epoch, start_batch=(self.step % self.per_epoch) * self.accum)
                batches = iter(self.loader)
                while True:
                    lr = self.scheduler.get_last_lr()[0]
                    sums += self._train_step(batches)
                    window_steps += 1
                    runlog.advance()
                    if self.step % config.log_every == 0 or self.step == stop:
                        if dist.world_size > 1:
                            torch.distributed.all_reduce(sums)
                        mean = (sums / (window_steps * dist.world_size)).tolist()
                        seconds = max(time.perf_counter() - window_start, 1e-9)
                        runlog.step({
                            "step": self.step, "epoch": epoch, "lr": lr, "loss": mean[0],
                            "loss_global": mean[1], "loss_local": mean[2], "grad_norm": mean[3],
                            "loss_scale": self.scaler.get_scale() if self.scaler.is_enabled() else 1.0,
                            "pairs_per_s": window_steps * config.batch_size * self.accum * dist.world_size
                            / seconds,
                        })
                        sums.zero_()
                        window_start, window_steps = time.perf_counter(), 0
                    every = config.eval_every
                    if held is not None and (self.step == self.total or (every and self.step % every == 0)):
                        scores = held(self.ema.module).to_dict()
                        metrics["steps"][str(self.step)] = scores  # type: ignore[index]
                        runlog.scalars("eval", scores, self.step)
                        _write_json(out / "metrics.json", metrics)
                    if self.step % config.checkpoint_every == 0 or self.step == stop:
                        self._save()
                    if self.step >= stop or self.step % self.per_epoch == 0:  # the end, or of an epoch
                        break
        finally:
            runlog.close()
            self.dataset.close()
        return self._finish(metrics)

    def _start_evaluation(self, runlog: RunLog) -> tuple[_HeldOut, dict[str, Any]]:
        """Held-out data, and the metrics so far (a resumed run continues its metrics.json)."""
        held = _HeldOut(self.train_index, self.held_index, self.teacher, self.cache, self.config, self.amp)
        metrics = _read_json(self.out / "metrics.json") if self.step > 0 else None
        if metrics is None:  # a fresh run: the baseline and the student before any step
            metrics = {
                "train_pairs": len(self.train_index), "heldout_pairs": len(held.targets),
                "baseline": held.baseline.to_dict(), "before": held(self.ema.module).to_dict(), "steps": {},
            }
            _write_json(self.out / "metrics.json", metrics)
        runlog.scalars("eval_baseline", metrics["baseline"], self.step)
        return held, metrics

    def _finish(self, metrics: dict[str, Any] | None) -> TrainResult:
        export = None
        if self.step >= self.total:
            if self.dist.main:
                if metrics is not None:
                    metrics["final"] = metrics["steps"][str(self.total)]
                    _write_json(self.out / "metrics.json", metrics)
                export = _export(self.ema.module, self.teacher, self.config, self.out, self.total, metrics,
                                 self.overwrite)
            self.dist.barrier()
        return TrainResult(self.out, self.step, self.total, export, metrics, self.ema.module, self.student,
                           self.dist.rank)


# ---- before and after ---------------------------------------------------------------------------
def _is_run_config(path: Path) -> bool:
    data = read_small_json(path)
    if not isinstance(data, dict):
        return False
    return data.get("format") == CONFIG_FORMAT or {"slides", "out_dir", "teacher", "student"} <= set(data)


def _is_run_metrics(path: Path) -> bool:
    data = read_small_json(path)
    return isinstance(data, dict) and {"train_pairs", "heldout_pairs", "baseline", "steps"} <= set(data)


#: What a run writes into its output folder, and how each is known to be a run's own.
RUN_OUTPUTS: dict[str, OutputKind] = {
    "config.json": OutputKind("training configuration", _is_run_config),
    CHECKPOINT_NAME: CHECKPOINT_KIND,
    "log.csv": LOG_KIND,
    "metrics.json": OutputKind("training metrics", _is_run_metrics),
    "tensorboard": TENSORBOARD_KIND,
    EXPORT_NAME: MODEL_FOLDER_KIND,
}


def _check_fresh_outputs(config: TrainConfig, resume: Resume, overwrite: bool) -> None:
    """Before a run starts from step 0: nothing an earlier run (or anyone) left under the names a
    run writes may be replaced without ``overwrite``.

    A resumed run with no checkpoint yet (killed before its first) is the same run: its own
    outputs, with the same configuration, are started again.
    """
    out = config.out_dir
    same_run = bool(resume) and _same_config(out / "config.json", config)
    for name, kind in RUN_OUTPUTS.items():
        path = out / name
        if not check_target(path, kind, overwrite) or overwrite or same_run:
            continue
        raise TrainError(
            f"{path}: {out} holds an earlier run ({name}); resume it (--resume), start it again with"
            " --overwrite, or choose another output folder"
        )


def _same_config(path: Path, config: TrainConfig) -> bool:
    data = read_small_json(path)
    try:
        return isinstance(data, dict) and not config.differences(TrainConfig.from_dict(data))
    except (TypeError, ValueError):
        return False


def _resume_state(config: TrainConfig, resume: Resume) -> dict[str, Any] | None:
    existing = config.out_dir / CHECKPOINT_NAME
    if not resume:
        return None
    if resume is True and not existing.exists():
        # a job killed before its first checkpoint, or a requeue script that always resumes
        log.info("%s: no checkpoint yet; starting from step 0", config.out_dir)
        return None
    path = existing if resume is True else Path(resume)
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint to resume from")
    state = load_checkpoint(path)  # CheckpointError: not ours, damaged, or carrying code
    differ = config.differences(TrainConfig.from_dict(state["config"]))
    if differ:
        what = ", ".join(f"{k}: {b!r} -> {a!r}" for k, (a, b) in differ.items())
        raise TrainError(
            f"cannot resume with a changed configuration ({what}); only runtime options may change"
        )
    return state


def _check_heads(student: Any, teacher: Any, config: TrainConfig) -> None:
    """The heads map the student's width to the teacher's embedding size, and reload as such.

    ``create_model(export)`` rebuilds the heads for the registered teacher's width (see
    ``models.head_dims``), so a teacher of another width would train but not reload.
    """
    _, out_dim = head_dims(student.spec, tiny=student.tiny, width=student.width)
    if out_dim != teacher.embed_dim:
        raise ValueError(
            f"the {student.spec.name} student's heads are built for {student.spec.distilled_from}'s"
            f" {out_dim}-d embedding, but the teacher {teacher.spec.name} gives {teacher.embed_dim}-d"
            " vectors; choose a teacher of that size (uni2-h, h-optimus-0: 1536-d), or a tiny teacher"
            " for a tiny student"
        )


def _prepare_cache(config: TrainConfig, index: PairIndex, teacher: Any, dist: _Dist,
                   amp: torch.dtype | None) -> TeacherCache:
    """Open the teacher cache, building it first (rank 0; the others wait) if it is missing."""
    path = config.cache
    if dist.main and not path.exists():  # type: ignore[union-attr]
        log.info("building the teacher cache %s for %d pairs", path, len(index))
        build_teacher_cache(
            path, index, teacher, flips=config.flips, batch_size=max(1, config.batch_size // 4),
            num_workers=config.cache_workers, teacher_chunk=config.teacher_chunk, amp_dtype=amp,
            progress=config.progress,
        )
    dist.barrier()
    cache = TeacherCache(path, in_memory=config.cache_in_memory)  # type: ignore[arg-type]
    cache.check(index, model_identity(teacher), flips=config.flips)
    return cache


def _export(ema: Any, teacher: Any, config: TrainConfig, out: Path, steps: int, metrics: dict | None,
            overwrite: bool = False) -> Path:
    """The EMA student with both heads, as a model folder, plus how it was made.

    The folder appears whole, ``distillation.json`` included; a run killed while exporting left
    its checkpoint at the last step, so ``--resume`` exports again and nothing more.
    """
    how = {
        "method": "XMAG cross-magnification distillation (arXiv 2509.23097)",
        "teacher": model_identity(teacher),
        "teacher_licence": teacher.spec.licence,
        "licence_note": (
            "a student distilled from a teacher inherits the teacher's terms; from UNI2-h:"
            " CC-BY-NC-ND-4.0 (non-commercial, no derivatives)"
        ),
        "steps": steps,
        "config": config.to_dict(),
        "heldout": metrics,
    }
    folder = out / EXPORT_NAME
    # a student distilled from a random teacher (or from a random start) learned nothing real
    ema.weights = dataclasses.replace(ema.weights, random=bool(ema.weights.random or teacher.weights.random))
    with atomic_path(folder, MODEL_FOLDER_KIND, overwrite=overwrite) as tmp:
        save_model(ema, tmp)
        _write_json(tmp / "distillation.json", how)
    return folder


def _write_json(path: Path, data: Any, *, overwrite: bool = False) -> None:
    write_json(path, data, RUN_OUTPUTS.get(path.name, ANY_FILE), overwrite=overwrite)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
