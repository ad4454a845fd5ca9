"""Held-out evaluation of a distilled student: how well it predicts the teacher.

Measured so that a constant answer cannot pass. A random teacher maps every patch to nearly
the same direction, so the plain cosine between the student's prediction and the teacher's
vector is high for any constant near that direction: predicting the training-set mean
already scores ~0.98. The metrics therefore work on **unit vectors centred on the training
mean** (prediction and target are normalised to unit length, the training-set mean of the
normalised targets is subtracted from both, then compared). The raw head output cannot be
centred instead: the cosine loss leaves its scale free.

- ``centred_cos``: mean cosine of the centred unit vectors (0 for the constant mean);
- ``r2``: 1 - sum |u_pred - u_true|^2 / sum |u_true - mean|^2 on unit vectors (0 for the mean);
- ``cos``: the plain cosine, a sanity check.

"global" compares the global head with the mean of the 16 crop vectors (the loss's target),
"local" each block of the local head with its crop's vector.

Held-out pairs must not share tissue with training pairs: :func:`spatial_split` holds out
whole blocks of each slide and drops the training fields of view that overlap them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .losses import block_tokens
from .pairs import PairDataset, PairIndex
from .teacher import autocast, embed_crops

__all__ = [
    "Alignment",
    "alignment",
    "constant_alignment",
    "evaluate_student",
    "predict",
    "read_eval_set",
    "spatial_split",
    "training_means",
    "unit",
]


# ---- the split ----------------------------------------------------------------------------
def spatial_split(
    index: PairIndex, holdout: float, block_um: float = 1000.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of training and held-out pairs; no held-out field overlaps a training one.

    Each slide is cut into square blocks of ``block_um``; a pair belongs to the block of its
    field's centre. Blocks are drawn at random (``seed``) until at least ``holdout`` of the
    pairs are held out. Training keeps the pairs of the other blocks whose field of view does
    not overlap any held-out field (neighbours of a held-out block are dropped).
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout is a fraction between 0 and 1, got {holdout!r}")
    if block_um <= 0:
        raise ValueError(f"block_um must be positive, got {block_um!r}")
    n = len(index)
    block_ids = np.zeros(n, np.int64)
    sides = np.zeros(n, np.float64)
    offset = 0
    for number, geometry in enumerate(index.geometries):
        here = index.slide == number
        side = geometry.region_size_level0
        level0_um = geometry.teacher_mpp * geometry.region_size / side  # slide µm per level-0 px
        block = block_um / level0_um
        centre = index.coords[here] + side / 2
        cells = np.floor(centre / block).astype(np.int64)
        _, local = np.unique(cells, axis=0, return_inverse=True)
        block_ids[here] = offset + local.ravel()
        offset += int(local.max()) + 1 if local.size else 0
        sides[here] = side
    rng = np.random.default_rng(seed)
    held = np.zeros(n, bool)
    for block in rng.permutation(offset):
        if held.sum() >= holdout * n:
            break
        held |= block_ids == block
    train = ~held & ~_overlaps(index, sides, held)
    return np.flatnonzero(train), np.flatnonzero(held)


def _overlaps(index: PairIndex, sides: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Pairs whose field overlaps (by more than an edge) a held-out field of the same slide."""
    out = np.zeros(len(index), bool)
    for number in np.unique(index.slide):
        here = np.flatnonzero(index.slide == number)
        targets = index.coords[here[held[here]]].astype(np.float64)
        if not len(targets):
            continue
        side = sides[here[0]]
        step = max(1, 2_000_000 // len(targets))  # bounded memory (~32 MB) on big slides
        for start in range(0, len(here), step):
            chunk = here[start : start + step]
            delta = np.abs(index.coords[chunk, None, :].astype(np.float64) - targets[None])
            out[chunk] = ((delta[..., 0] < side) & (delta[..., 1] < side)).any(axis=1)
    return out


# ---- the metrics --------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Alignment:
    global_centred_cos: float
    global_r2: float
    global_cos: float
    local_centred_cos: float
    local_r2: float
    local_cos: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _scores(pred: np.ndarray, true: np.ndarray, mean: np.ndarray) -> tuple[float, float, float]:
    """Centred cosine, R² and plain cosine of (N, D) predictions against targets."""
    u_pred, u_true = unit(pred.astype(np.float64)), unit(true.astype(np.float64))
    plain = float(np.mean(np.sum(u_pred * u_true, axis=-1)))
    centred = float(np.mean(np.sum(unit(u_pred - mean) * unit(u_true - mean), axis=-1)))
    r2 = 1.0 - float(np.sum((u_pred - u_true) ** 2) / np.sum((u_true - mean) ** 2))
    return centred, r2, plain


def training_means(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means of the unit global targets and of the unit crop targets of training pairs (N, n*n, D)."""
    t = targets.astype(np.float64)
    return unit(t.mean(axis=1)).mean(axis=0), unit(t).reshape(-1, t.shape[-1]).mean(axis=0)


def alignment(
    pred_global: np.ndarray,
    pred_local: np.ndarray,
    targets: np.ndarray,
    means: tuple[np.ndarray, np.ndarray],
) -> Alignment:
    """Scores of predictions ``(N, D)`` and ``(N, n*n, D)`` against teacher targets ``(N, n*n, D)``.

    ``means``: from :func:`training_means` on the *training* targets.
    """
    mean_g, mean_l = means
    g = _scores(pred_global, targets.mean(axis=1), mean_g)
    d = targets.shape[-1]
    loc = _scores(pred_local.reshape(-1, d), targets.reshape(-1, d), mean_l)
    return Alignment(g[0], g[1], g[2], loc[0], loc[1], loc[2])


def constant_alignment(targets: np.ndarray, means: tuple[np.ndarray, np.ndarray]) -> Alignment:
    """The baseline: every prediction is the training-set mean of the unit targets."""
    n, crops, _ = targets.shape
    pred_g = np.broadcast_to(means[0], (n, means[0].size))
    pred_l = np.broadcast_to(means[1], (n, crops, means[1].size))
    return alignment(pred_g, pred_l, targets, means)


# ---- running the models ---------------------------------------------------------------------
def read_eval_set(
    teacher: Any, index: PairIndex, *, batch_size: int = 8, num_workers: int = 0,
    amp_dtype: torch.dtype | None = None, cache: Any = None, chunk: int = 256, images: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Un-augmented 5x images (N, S, S, 3) uint8 (or None) and teacher vectors (N, n*n, D).

    One pass over the pairs: each field is read once (or taken from ``cache``), so an
    evaluation repeated during training costs student forwards only. The images stay in
    memory: S * S * 3 bytes per pair (150 KB at 224 px).
    """
    dataset = PairDataset(index, views=1, flips=False, jitter=False, cache=cache)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    pictures, targets = [], []
    for batch in loader:
        if images:
            pictures.append(batch["student"][:, 0].numpy())
        if cache is None:
            crops = batch["teacher"][:, 0].to(teacher.device)
            targets.append(embed_crops(teacher, crops, chunk=chunk, amp_dtype=amp_dtype).cpu().numpy())
    dataset.close()
    stacked = np.concatenate(targets) if cache is None else cache.all_targets(index.rows, variant=0)
    return (np.concatenate(pictures) if images else None), stacked


@torch.no_grad()
def predict(
    student: Any, images: np.ndarray, *, batch_size: int = 32, amp_dtype: torch.dtype | None = None,
    crops_per_side: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """The student's heads on 5x images (N, S, S, 3) uint8: global (N, D), local (N, n*n, D).

    Heads in eval mode (BatchNorm running statistics); the model's mode is restored after.
    """
    was_training = student.training
    student.eval()
    pred_g, pred_l = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = student.preprocess(images[start : start + batch_size])
            with autocast(student.device, amp_dtype):
                cls, grid = student.embed(x, tokens=True)
                g = student.heads["global"](cls)
                loc = student.heads["local"](block_tokens(grid, crops_per_side))
            pred_g.append(g.float().cpu().numpy())
            pred_l.append(loc.float().cpu().numpy())
    finally:
        student.train(was_training)
    return np.concatenate(pred_g), np.concatenate(pred_l)


def evaluate_student(
    student: Any,
    images: np.ndarray,
    targets: np.ndarray,
    means: tuple[np.ndarray, np.ndarray],
    **kwargs: Any,
) -> Alignment:
    """The student's :class:`Alignment` on held-out pairs: their 5x images and teacher targets."""
    per_side = round(targets.shape[1] ** 0.5)
    pred_g, pred_l = predict(student, images, crops_per_side=per_side, **kwargs)
    return alignment(pred_g, pred_l, targets, means)
