"""Slide- and patch-level evaluation: linear probes, ABMIL, and end-to-end fine-tuning.

>>> from napari_xmag.mil import linear_probe, run_eval, read_attention   # doctest: +SKIP
>>> report = run_eval("labels.csv", "features/", "eval/", method="both", folds=5)  # doctest: +SKIP

Labels, metrics, probes and attention files need no torch; the ABMIL and fine-tuning names
are imported on first use, so reading an attention file for a heatmap does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..formats.attention import (
    ATTENTION_FORMAT,
    AttentionMap,
    attention_path,
    read_attention,
    write_attention,
)
from .data import LabelTable, MILError, load_bags, read_labels, slide_stem, stratified_folds
from .evaluate import METHODS, MILResult, cross_validate_abmil, probe_table, run_eval
from .metrics import METRICS, classification_metrics, summarise
from .probe import ProbeResult, linear_probe

_LAZY = {
    "ABMIL": "abmil",
    "ABMILSettings": "abmil",
    "train_abmil": "abmil",
    "predict_bag": "abmil",
    "save_abmil": "abmil",
    "load_abmil": "abmil",
    "FinetuneSettings": "finetune",
    "run_finetune": "finetune",
    "finetune_cv": "finetune",
    "activation_bytes_estimate": "student",
    "measure_step_memory": "student",
    "cache_teacher_targets": "targets",
}

__all__ = [
    "ATTENTION_FORMAT",
    "METHODS",
    "METRICS",
    "AttentionMap",
    "LabelTable",
    "MILError",
    "MILResult",
    "ProbeResult",
    "attention_path",
    "classification_metrics",
    "cross_validate_abmil",
    "linear_probe",
    "load_bags",
    "probe_table",
    "read_attention",
    "read_labels",
    "run_eval",
    "slide_stem",
    "stratified_folds",
    "summarise",
    "write_attention",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
