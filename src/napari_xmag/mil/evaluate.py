"""Cross-validated evaluation of feature files: a linear probe on patches, ABMIL on slides.

``run_eval`` is what ``xmag eval`` calls: labels CSV + features folder -> ``OUT/report.json``,
``OUT/attention/<slide>.h5`` (ABMIL attention of the fold that held the slide out) and
``OUT/abmil/fold<k>.safetensors`` (the ABMIL head of each fold).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._atomic import check_target, json_kind
from ..features import FeatureSet
from ..formats.attention import ATTENTION_KIND, AttentionMap, attention_attrs, attention_path, write_attention
from .data import LabelTable, MILError, load_bags, read_labels, stratified_folds, write_json
from .metrics import classification_metrics, format_summary, summarise
from .probe import linear_probe

__all__ = ["METHODS", "MILResult", "cross_validate_abmil", "probe_table", "run_eval"]

METHODS = ("probe", "abmil", "both")
EVAL_FORMAT = "napari-xmag-eval"
#: What ``run_eval`` may replace at ``OUT/report.json``: an evaluation report of ours.
EVAL_REPORT_KIND = json_kind("evaluation report", EVAL_FORMAT)


@dataclass
class MILResult:
    """Cross-validated ABMIL: per-fold metrics, out-of-fold predictions and attention."""

    folds: list[dict[str, float]]
    summary: dict[str, dict[str, float]]
    pooled: dict[str, float]
    classes: list[str]
    names: list[str]
    fold_of: np.ndarray  # (S,) the fold in which each slide was tested
    probabilities: np.ndarray  # (S, K) out-of-fold
    attention: list[tuple[np.ndarray, np.ndarray]]  # per slide: (weights, logits)
    models: list[Any] = field(default_factory=list)  # the ABMIL head of each fold
    history: list[list[float]] = field(default_factory=list)  # mean loss per epoch, per fold

    def predictions(self, y: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"slide": name, "fold": int(self.fold_of[i]), "label": self.classes[int(y[i])],
             "prediction": self.classes[int(self.probabilities[i].argmax())],
             "probabilities": self.probabilities[i].tolist()}
            for i, name in enumerate(self.names)
        ]

    def to_dict(self, y: np.ndarray) -> dict[str, Any]:
        return {"folds": self.folds, "summary": self.summary, "pooled": self.pooled,
                "loss_history": self.history, "predictions": self.predictions(y)}


def cross_validate_abmil(
    bags: Sequence[np.ndarray],
    y: np.ndarray,
    classes: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
    settings: Any = None,
    names: Sequence[str] | None = None,
) -> MILResult:
    """Stratified k-fold ABMIL over slide bags (one ``(N_i, D)`` array per slide).

    Fold ``k`` trains with seed ``seed + k``; every slide is predicted, and its attention
    taken, by the model of the fold that held it out.
    """
    from .abmil import ABMILSettings, predict_bag, train_abmil  # torch: probes and reports need none

    settings = settings or ABMILSettings()
    y = np.asarray(y, np.int64)
    names = list(names) if names is not None else [str(i) for i in range(len(bags))]
    n_classes = len(classes)
    prob = np.zeros((len(bags), n_classes))
    fold_of = np.full(len(bags), -1)
    attention: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0))] * len(bags)
    per_fold, models, history = [], [], []
    for k, (train, test) in enumerate(stratified_folds(y, folds, seed)):
        model, losses = train_abmil([bags[i] for i in train], y[train], n_classes, settings, seed + k)
        for i in test:
            prob[i], weights, logits = predict_bag(model, bags[i])
            attention[i] = (weights, logits)
            fold_of[i] = k
        per_fold.append(classification_metrics(y[test], prob[test]))
        models.append(model)
        history.append(losses)
    return MILResult(
        folds=per_fold, summary=summarise(per_fold), pooled=classification_metrics(y, prob),
        classes=list(classes), names=names, fold_of=fold_of, probabilities=prob,
        attention=attention, models=models, history=history,
    )


def probe_table(
    table: LabelTable,
    bags: dict[str, FeatureSet],
    *,
    folds: int = 5,
    seed: int = 0,
    max_patches_per_slide: int | None = 1000,
) -> dict[str, Any]:
    """The linear probe on the patches of a label table, as a report section.

    Slide labels: every patch inherits its slide's label (at most ``max_patches_per_slide``
    per slide, a seeded random subset, so big slides do not outvote small ones) and folds
    keep slides whole; the out-of-fold patch probabilities, averaged per slide, also give
    slide-level metrics. Patch labels: the labelled patches (matched to the features file's
    ``coords`` exactly); folds keep slides whole when there are at least ``folds`` slides.
    """
    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    if table.kind == "slide":
        for s, stem in enumerate(table.stems):
            feats = bags[stem].features
            if max_patches_per_slide is not None and len(feats) > max_patches_per_slide:
                feats = feats[np.sort(rng.choice(len(feats), max_patches_per_slide, replace=False))]
            xs.append(feats)
            ys.append(np.full(len(feats), table.y[s]))
            groups.append(np.full(len(feats), s))
    else:
        assert table.xy is not None  # patch tables always have coordinates
        for s, stem in enumerate(table.slides):
            rows = np.flatnonzero(np.asarray(table.stems) == stem)
            index = {tuple(xy): i for i, xy in enumerate(bags[stem].coords.tolist())}
            found = [index.get(tuple(table.xy[r].tolist())) for r in rows]
            missing = [r for r, i in zip(rows, found, strict=True) if i is None]
            if missing:
                x, y = table.xy[missing[0]]
                raise MILError(
                    f"{table.path}: {len(missing)} labelled patch(es) of {stem} are not in its features"
                    f" file, e.g. x={x}, y={y} (x, y must be a patch origin from its 'coords')"
                )
            xs.append(bags[stem].features[np.array(found, np.int64)])
            ys.append(table.y[rows])
            groups.append(np.full(len(rows), s))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    by_slide = table.kind == "slide" or len(table.slides) >= folds
    result = linear_probe(x, y, folds=folds, seed=seed, groups=g if by_slide else None, classes=table.classes)
    section = result.to_dict()
    section["split"] = "slide" if by_slide else "patch (fewer slides than folds)"
    if table.kind == "slide":
        slide_prob = np.stack([result.probabilities[g == s].mean(0) for s in range(len(table.stems))])
        section["slide_level"] = classification_metrics(table.y, slide_prob)
    return section


def run_eval(
    csv: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    method: str = "both",
    folds: int = 5,
    seed: int = 0,
    abmil: Any = None,
    max_patches_per_slide: int | None = 1000,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Probe and/or ABMIL, cross-validated; writes ``OUT/report.json`` and returns it.

    Files already at the outputs' names that are not ours (``report.json``, ``attention/*.h5``,
    ``abmil/fold*.safetensors``) are refused before any work, unless ``overwrite``.
    """
    from .abmil import ABMIL_KIND, ABMILSettings, save_abmil, settings_dict  # torch, as above

    if method not in METHODS:
        raise MILError(f"method must be one of {METHODS}, not {method!r}")
    say = log or (lambda _: None)
    out_dir = Path(out_dir)
    table = read_labels(csv)
    if table.kind == "patch" and method == "abmil":
        raise MILError(f"{table.path}: ABMIL needs one label per slide (slide,label);"
                       " this file labels patches")
    if table.kind == "slide":  # "fewer slides than folds" before reading any features
        stratified_folds(table.y, folds, seed, unit="slides")
    check_target(out_dir / "report.json", EVAL_REPORT_KIND, overwrite)
    if method in ("abmil", "both") and table.kind == "slide":
        for stem in table.stems:
            check_target(attention_path(out_dir, stem), ATTENTION_KIND, overwrite)
        for k in range(folds):
            check_target(out_dir / "abmil" / f"fold{k}.safetensors", ABMIL_KIND, overwrite)
    bags = load_bags(table, features_dir)
    abmil = abmil or ABMILSettings()
    report: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "labels": str(table.path), "features": str(Path(features_dir)), "label_kind": table.kind,
        "classes": table.classes, "class_counts": table.class_counts(), "slides": len(table.slides),
        "folds": folds, "seed": seed, "method": method, "xmag_version": __version__, "notes": [],
    }
    if method in ("probe", "both"):
        report["probe"] = probe_table(table, bags, folds=folds, seed=seed,
                                      max_patches_per_slide=max_patches_per_slide)
        report["probe"]["max_patches_per_slide"] = max_patches_per_slide
        say(f"probe: {format_summary(report['probe']['summary'])}")
    if method in ("abmil", "both") and table.kind == "patch":
        report["notes"].append("ABMIL skipped: it needs slide labels, the CSV labels patches")
    elif method in ("abmil", "both"):
        result = cross_validate_abmil(
            [bags[s].features for s in table.stems], table.y, table.classes,
            folds=folds, seed=seed, settings=abmil, names=table.stems,
        )
        for i, stem in enumerate(table.stems):
            weights, logits = result.attention[i]
            write_attention(attention_path(out_dir, stem), overwrite=overwrite, data=AttentionMap(
                bags[stem].coords, weights, logits,
                attrs=attention_attrs(stem, table.classes, table.y[i], result.probabilities[i],
                                      result.fold_of[i], "abmil", bags[stem].attrs.get("slide_path", stem)),
                coords_attrs=bags[stem].coords_attrs,
            ))
        for k, model in enumerate(result.models):
            save_abmil(model, out_dir / "abmil" / f"fold{k}.safetensors", table.classes, overwrite=overwrite)
        report["abmil"] = {**result.to_dict(table.y), "settings": settings_dict(abmil),
                           "attention_dir": str(out_dir / "attention")}
        say(f"abmil: {format_summary(result.summary)}")
    write_json(out_dir / "report.json", report, EVAL_REPORT_KIND, overwrite=overwrite)
    return report

