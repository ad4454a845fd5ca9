"""Attention files: one h5 per slide with each patch's coordinates and its ABMIL attention.

``<OUT>/attention/<slide stem>.h5``, written atomically:

====================  =============  ====================================================
dataset               shape          meaning
====================  =============  ====================================================
``coords``            (N, 2) int64   level-0 x, y of each patch (as in the features file),
                                     with the features file's ``coords`` attributes
                                     (``patch_size_level0``, ``mpp``, ...)
``attention``         (N,) float32   softmax attention over the slide's bag (sums to 1)
``attention_logits``  (N,) float32   the scores before the softmax, ``w^T(tanh(Vh) * sigm(Uh))``
====================  =============  ====================================================

File attributes: ``slide``, ``label`` (true class name), ``prediction`` (predicted class
name), ``probabilities`` (per class), ``classes``, ``fold`` (the fold whose model held the
slide out), ``method`` (``abmil`` or ``finetune``), ``source`` (the features file or slide),
``format`` = ``napari-xmag-attention``, ``format_version``, ``xmag_version``.

Softmax weights shrink as bags grow (a 4000-patch slide has mean weight 1/4000); for a
heatmap use :meth:`AttentionMap.percentiles` (CLAM's choice) or the logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.stats import rankdata

from .. import __version__
from .._atomic import atomic_path
from .._paths import InputFileError
from .._values import from_attrs, to_attr
from . import h5
from .h5 import format_kind

__all__ = [
    "ATTENTION_FORMAT",
    "ATTENTION_KIND",
    "AttentionFileError",
    "AttentionMap",
    "attention_attrs",
    "attention_path",
    "attention_values",
    "read_attention",
    "write_attention",
]

ATTENTION_FORMAT = "napari-xmag-attention"
ATTENTION_VERSION = 1
#: Per-patch values of an attention file a map can show (:func:`attention_values`).
VALUES = ("percentile", "attention", "logits")


class AttentionFileError(InputFileError):
    """An attention file that is missing, damaged or not ours."""


#: What ``write_attention`` may replace: an attention file of ours.
ATTENTION_KIND = format_kind("attention file", ATTENTION_FORMAT)


@dataclass
class AttentionMap:
    coords: np.ndarray  # (N, 2) int64 level-0 x, y
    attention: np.ndarray  # (N,) softmax weights, sum 1
    logits: np.ndarray  # (N,) pre-softmax scores
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)

    def percentiles(self) -> np.ndarray:
        """Each patch's attention rank as a fraction in [0, 1] (ties share a rank): the one
        ranking of the package, of the attention weights (softmax keeps the logits' order)."""
        if len(self.attention) < 2:
            return np.ones(len(self.attention), np.float32)
        ranks = rankdata(self.attention, method="average")
        return ((ranks - 1) / (len(ranks) - 1)).astype(np.float32)


def attention_attrs(
    slide: str, classes: list[str], label: int, probabilities: np.ndarray, fold: int, method: str, source: str
) -> dict[str, Any]:
    """The file attributes of one held-out slide's attention (see the module docstring)."""
    return {
        "slide": slide,
        "label": classes[int(label)],
        "prediction": classes[int(np.argmax(probabilities))],
        "probabilities": [float(p) for p in probabilities],
        "classes": list(classes),
        "fold": int(fold),
        "method": method,
        "source": str(source),
    }


def attention_path(out_dir: str | os.PathLike[str], stem: str) -> Path:
    """``OUT/attention/<stem>.h5``."""
    return Path(out_dir) / "attention" / f"{stem}.h5"


def write_attention(path: str | os.PathLike[str], data: AttentionMap, *, overwrite: bool = False) -> Path:
    """Write one slide's attention file atomically (temporary sibling, then rename)."""
    path = Path(path)
    n = len(data.coords)
    if data.attention.shape != (n,) or data.logits.shape != (n,):
        raise ValueError(f"{n} coords but attention {data.attention.shape}, logits {data.logits.shape}")
    with atomic_path(path, ATTENTION_KIND, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        coords = f.create_dataset("coords", data=np.asarray(data.coords, np.int64).reshape(-1, 2))
        f.create_dataset("attention", data=np.asarray(data.attention, np.float32))
        f.create_dataset("attention_logits", data=np.asarray(data.logits, np.float32))
        for key, value in data.coords_attrs.items():
            coords.attrs[key] = to_attr(value)
        attrs = {
            **data.attrs,
            "format": ATTENTION_FORMAT,
            "format_version": ATTENTION_VERSION,
            "xmag_version": __version__,
        }
        for key, value in attrs.items():
            f.attrs[key] = to_attr(value)
    return path


def read_attention(path: str | os.PathLike[str], *, ours: bool = True) -> AttentionMap:
    """Read an attention file written by :func:`write_attention`; ``ours=False`` takes any h5
    with ``coords`` and ``attention`` (``attention_logits`` optional: the ranks then come from
    the attention itself, in the same order, as softmax keeps it)."""
    path = Path(path)
    with h5.open_h5(path, AttentionFileError, "attention file") as f:
        if ours and f.attrs.get("format") != ATTENTION_FORMAT:
            raise AttentionFileError(f"{path}: not a napari-xmag attention file")
        try:
            attention = np.asarray(h5.read(f, "attention", path, AttentionFileError), np.float32)
            logits = (np.asarray(h5.read(f, "attention_logits", path, AttentionFileError), np.float32)
                      if ours or "attention_logits" in f else attention.copy())
            return AttentionMap(
                coords=np.asarray(h5.read(f, "coords", path, AttentionFileError), np.int64),
                attention=attention,
                logits=logits,
                attrs=from_attrs(f.attrs),
                coords_attrs=from_attrs(f["coords"].attrs),
            )
        except (OSError, KeyError, ValueError) as err:
            raise AttentionFileError(f"{path}: not a readable attention file ({err})") from None


def attention_values(
    path: str | os.PathLike[str], values: str = "percentile"
) -> tuple[np.ndarray, np.ndarray]:
    """(coords, values) of an attention file, for a map: ``"percentile"`` (each patch's rank in
    [0, 1]; softmax weights shrink with the bag, ranks do not), ``"attention"`` or ``"logits"``."""
    if values not in VALUES:
        raise ValueError(f"attention values are {', '.join(VALUES)}, not {values!r}")
    data = read_attention(path, ours=False)
    if len(data.coords) != len(data.attention):
        raise AttentionFileError(
            f"{path}: {len(data.coords)} coords but {len(data.attention)} attention values"
        )
    if values == "percentile":
        return data.coords, data.percentiles().astype(np.float64)
    return data.coords, np.asarray(data.attention if values == "attention" else data.logits, np.float64)
