"""Training checkpoints: everything a resumed run needs to continue exactly where it stopped.

A checkpoint holds the student (backbone and heads), its EMA, the optimiser, the learning-
rate schedule, the AMP grad scaler, the random states of python, numpy and torch (CPU and
CUDA), the step and epoch (which fix the data order: see :mod:`~napari_xmag.distill.order`)
and the run's configuration. It is written to a temporary sibling and renamed into place,
so a crash while saving leaves the previous checkpoint intact (and the next save removes the
half-written temporary).

Only tensors and plain containers are stored (numpy's state is converted to lists), so a
checkpoint loads with ``torch.load(weights_only=True)``: loading one never runs code.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import OutputKind, atomic_path
from ..models.files import torch_load_safely

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KIND",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "napari-xmag-train-checkpoint"


class CheckpointError(ValueError):
    """A training checkpoint cannot be resumed from: missing, damaged, or carrying code."""


def is_checkpoint(path: Path) -> bool:
    """True for a checkpoint :func:`save_checkpoint` wrote: a torch zip whose pickle (the
    structure, small; the tensors are separate entries) names our format. Never raises."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > 64 << 20:
                return False
            return CHECKPOINT_FORMAT.encode() in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


#: What ``save_checkpoint`` may replace: a checkpoint of ours.
CHECKPOINT_KIND = OutputKind("training checkpoint", is_checkpoint)


def get_rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": np_state["bit_generator"],
        "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
        "has_gauss": np_state["has_gauss"],
        "gauss": np_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    with atomic_path(path, CHECKPOINT_KIND) as tmp, tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state a checkpoint holds, read with ``weights_only=True``: a checkpoint carrying code is
    refused in one line (:class:`CheckpointError`), never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    state = torch_load_safely(path, CheckpointError, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a napari-xmag training checkpoint")
    return state
