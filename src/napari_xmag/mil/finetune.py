"""End-to-end: fine-tune the student's last blocks jointly with ABMIL on whole-slide 5x bags.

A 5x bag is 11-16x smaller than the 20x bag of the same tissue, small enough to backpropagate
from the slide label into the student. Each step takes one training slide, reads a seeded
random subset of at most ``max_patches`` of its 5x patches, and minimises

    cross-entropy(ABMIL(student CLS of the patches), slide label)
    + lambda * distillation_loss(student CLS and token grid, teacher CLS of the 16 crops)

The second term (the XMAG objective, against the frozen 20x teacher) keeps the student's
embedding where the teacher put it while the slide label pulls on it. Teacher targets are
computed once per slide and cached (``<cache>/<stem>.h5``), then read per step. Only the
last ``blocks`` transformer blocks and the final norm of the student are trained: autograd
then keeps activations for those blocks only. Gradient checkpointing of the trained blocks
trades one more forward through them for keeping just their inputs.

Cross-validation as in ``xmag eval``: every fold fine-tunes its own copy of the student and
predicts (and writes attention for) the slides it held out.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from .._atomic import check_target, json_kind
from ..distill.losses import distillation_loss
from ..distill.pairs import PairSettings
from ..embed import coords_attributes, embed_patches, iter_patch_batches
from ..formats.attention import ATTENTION_KIND, AttentionMap, attention_attrs, attention_path, write_attention
from ..models import create_model, resolve_device, save_model
from ..models.folder import MODEL_FOLDER_KIND
from ..models.precision import check_precision
from ..provenance import model_identity
from ..slide import Slide
from ..tiling import require_patches, slide_pairs
from .abmil import ABMIL, ABMIL_KIND, class_weights, predict_bag, save_abmil, seeded
from .data import LabelTable, MILError, read_labels, slide_stem, stratified_folds, write_json
from .metrics import classification_metrics, format_summary, summarise
from .student import (
    activation_bytes_estimate,
    checkpointed,
    mlp_ratio,
    peak_rss,
    set_trainable,
    tokens_per_patch,
    train_mode,
)
from .targets import cache_teacher_targets, read_targets, slide_index

__all__ = ["FinetuneSettings", "SlideBag", "finetune_cv", "prepare_bags", "resolve_slides", "run_finetune"]

FINETUNE_FORMAT = "napari-xmag-finetune"
FINETUNE_REPORT_KIND = json_kind("fine-tuning report", FINETUNE_FORMAT)


@dataclass(frozen=True)
class FinetuneSettings:
    blocks: int = 2  # the student's last N transformer blocks are trained, the rest frozen
    distill_weight: float = 1.0  # lambda; 0 trains on the slide label alone (no teacher needed)
    epochs: int = 3  # one step per training slide per epoch
    max_patches: int = 64  # patches per slide per step: bounds memory (see activation_bytes_estimate)
    lr: float = 2e-4  # ABMIL and distillation heads
    backbone_lr: float = 1e-5  # the trained student blocks
    weight_decay: float = 1e-4
    checkpointing: bool = False  # recompute the trained blocks in backward instead of storing them
    hidden: int = 256  # ABMIL size
    attn_dim: int = 128
    dropout: float = 0.25
    mpp: float = 2.0  # the student's patches: 224 px at 2.0 µm/px (5x)
    patch_size: int = 224
    tissue_threshold: float = 0.25
    teacher_mpp: float = 0.5  # the teacher's crops: 224 px at 0.5 µm/px (20x)
    mpp_override: float | None = None
    batch_size: int = 32  # inference batches (held-out slides, teacher targets)
    workers: int = 2
    device: str = "cpu"
    precision: str = "auto"  # fp32 or bf16 (autocast); auto: bf16 where the device has it

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.epochs < 1 or self.max_patches < 1:
            raise ValueError("blocks, epochs and max patches must be positive")
        if self.distill_weight < 0:
            raise ValueError(f"the distillation weight must be >= 0, got {self.distill_weight}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")


@dataclass
class SlideBag:
    """One slide's 5x patches and, with distillation, where its teacher targets are."""

    stem: str
    path: Path
    coords: np.ndarray  # (N, 2) level-0 origins of the 5x patches
    coords_attrs: dict[str, Any]
    crops: np.ndarray | None = None  # (N, n*n, 2) teacher crop origins
    crop_size: int = 224
    targets: Path | None = None  # the teacher CLS cache (a TeacherCache store)
    pairs: Any = None  # the slide's PairGeometry


# ---- slides and patches ------------------------------------------------
def resolve_slides(table: LabelTable, slides_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The slide file of each row: the CSV value as a path (absolute, relative to the current
    folder or to the CSV's folder), else ``SLIDES/<stem>.*``. All missing ones are named at once."""
    found, missing = [], []
    for name, stem in zip(table.names, table.stems, strict=True):
        candidates = [Path(name), table.path.parent / name]
        if slides_dir is not None:
            candidates += sorted(
                p for p in Path(slides_dir).glob(f"{stem}.*")
                if slide_stem(p.name) == stem and p.suffix.lower() not in (".h5", ".zarr", ".csv", ".json")
            )
        path = next((p for p in candidates if p.is_file()), None)
        (found if path else missing).append(path or stem)
    if missing:
        where = f" or in {slides_dir}" if slides_dir else " (pass --slides DIR to look in a folder)"
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        shown = ", ".join(map(str, missing[:3])) + more
        raise MILError(f"{table.path}: {len(missing)} slide(s) not found as paths{where}: {shown}")
    return found  # type: ignore[return-value]


def prepare_bags(
    table: LabelTable, paths: Sequence[Path], settings: FinetuneSettings, crop_size: int = 224
) -> list[SlideBag]:
    """Tissue patch grid of each slide at the student's mpp, and its teacher crops
    (:func:`napari_xmag.tiling.slide_pairs`, the one 5x grid + 20x pairing)."""
    bags = []
    for stem, path in zip(table.stems, paths, strict=True):
        with Slide(path, mpp=settings.mpp_override) as slide:
            paired = slide_pairs(slide, settings.mpp, settings.teacher_mpp, settings.patch_size, crop_size,
                                 min_tissue=settings.tissue_threshold)
            require_patches(paired.grid, slide, paired.mask)
            crops = paired.crop_coords() if settings.distill_weight > 0 else None
            attrs = coords_attributes(slide, paired.grid)
            bag = SlideBag(stem, Path(path), paired.coords, attrs, crops, crop_size)
            bag.pairs = paired.pairs
            bags.append(bag)
    return bags


def _read_patches(
    path: Path, coords: np.ndarray, mpp: float, size: int, settings: FinetuneSettings
) -> np.ndarray:

    batches = iter_patch_batches(path, coords, mpp, size, max(1, len(coords)), settings.workers,
                                 settings.mpp_override)
    return np.concatenate(list(batches))


def _autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---- cross-validated fine-tuning ----------------------------------------------------------
def _resolved(settings: FinetuneSettings) -> FinetuneSettings:
    """``auto`` as this device trains fastest, of the two precisions fine-tuning supports."""
    if settings.precision != "auto":
        return settings
    chosen = check_precision("auto", "training", resolve_device(settings.device))
    return replace(settings, precision="bf16" if chosen == "bf16" else "fp32")


def finetune_cv(
    table: LabelTable,
    bags: Sequence[SlideBag],
    student: Any,
    out_dir: str | os.PathLike[str],
    *,
    teacher: Any = None,
    teacher_cache: str | os.PathLike[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    settings: FinetuneSettings | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune a copy of ``student`` with ABMIL in each fold; returns and writes the report.

    Writes ``OUT/fold<k>/student/`` (``save_model``: loadable with ``create_model``),
    ``OUT/fold<k>/abmil.safetensors``, ``OUT/attention/<slide>.h5`` and ``OUT/report.json``.
    """
    settings = _resolved(settings or FinetuneSettings())
    say = log or (lambda _: None)
    out_dir = Path(out_dir)
    if table.kind != "slide":
        raise MILError(f"{table.path}: fine-tuning needs one label per slide (slide,label)")
    splits = stratified_folds(table.y, folds, seed, unit="slides")
    _check_outputs(out_dir, [b.stem for b in bags], folds, overwrite)
    distill = settings.distill_weight > 0
    if distill:
        if teacher is None:
            raise MILError("a distillation weight > 0 needs a teacher (or --lambda 0)")
        if student.heads is None:
            raise MILError(f"{student.name}: the student has no distillation heads")
        if student.heads["global"].out_dim != teacher.embed_dim:
            raise MILError(f"the student's heads predict {student.heads['global'].out_dim}-d targets,"
                           f" the teacher {teacher.name} gives {teacher.embed_dim}-d")
        cache = Path(teacher_cache) if teacher_cache else out_dir / "teacher_cache"
        pair_settings = PairSettings(
            student_mpp=settings.mpp, teacher_mpp=settings.teacher_mpp, patch_size=settings.patch_size,
            crop_size=bags[0].crop_size if bags else 224, min_tissue=settings.tissue_threshold,
        )
        for bag in bags:
            index = slide_index(bag.path, bag.coords, bag.pairs, pair_settings, settings.mpp_override)
            bag.targets = cache_teacher_targets(index, bag.stem, teacher, cache,
                                                batch_size=max(1, settings.batch_size // 16))
        say(f"teacher targets: {len(bags)} slides in {cache}")
    device = resolve_device(settings.device)
    start = time.perf_counter()
    samples = _initial_features(bags, student, settings, seed)
    prob = np.zeros((len(bags), len(table.classes)))
    fold_of = np.full(len(bags), -1)
    per_fold, steps = [], []
    for k, (train, test) in enumerate(splits):
        model, abmil, fold_steps = _train_fold(student, bags, table, train, k, seed, settings, device,
                                               np.concatenate([samples[i] for i in train]))
        steps += fold_steps
        say(f"fold {k}: {len(train)} slides x {settings.epochs} epochs, last loss {steps[-1]['loss']:.4f}")
        held_out = _predict_held_out(model, abmil, bags, test, settings, device, prob)
        for i, (weights, logits) in held_out.items():
            fold_of[i] = k
            write_attention(attention_path(out_dir, bags[i].stem), overwrite=overwrite, data=AttentionMap(
                bags[i].coords, weights, logits, coords_attrs=bags[i].coords_attrs,
                attrs=attention_attrs(bags[i].stem, table.classes, table.y[i], prob[i], k, "finetune",
                                      str(bags[i].path)),
            ))
        per_fold.append(classification_metrics(table.y[test], prob[test]))
        save_model(model, out_dir / f"fold{k}" / "student", overwrite=overwrite)
        save_abmil(abmil, out_dir / f"fold{k}" / "abmil.safetensors", table.classes, overwrite=overwrite)
    summary = summarise(per_fold)
    say(f"finetune: {format_summary(summary)}")
    report = {
        "format": FINETUNE_FORMAT,
        "labels": str(table.path), "classes": table.classes, "class_counts": table.class_counts(),
        "slides": len(bags), "folds": folds, "seed": seed,
        "student": model_identity(student),  # one identity, as in every other output
        "teacher": None if teacher is None else model_identity(teacher),
        "settings": asdict(settings),
        "folds_metrics": per_fold, "summary": summary,
        "pooled": classification_metrics(table.y, prob),
        "predictions": [
            {"slide": b.stem, "fold": int(fold_of[i]), "label": table.classes[int(table.y[i])],
             "prediction": table.classes[int(prob[i].argmax())], "probabilities": prob[i].tolist()}
            for i, b in enumerate(bags)
        ],
        "steps": steps,
        "memory": _memory_report(student, settings, device),
        "seconds": round(time.perf_counter() - start, 2),
        "xmag_version": __version__,
    }
    write_json(out_dir / "report.json", report, FINETUNE_REPORT_KIND, overwrite=overwrite)
    return report


def _check_outputs(out_dir: Path, stems: Sequence[str], folds: int, overwrite: bool) -> None:
    """Before any work: a finished run of ours is replaced only with ``overwrite``, and files of
    the outputs' names that are not ours are refused (unless ``overwrite``)."""
    targets = [(out_dir / "report.json", FINETUNE_REPORT_KIND)]
    for k in range(folds):
        targets += [(out_dir / f"fold{k}" / "student", MODEL_FOLDER_KIND),
                    (out_dir / f"fold{k}" / "abmil.safetensors", ABMIL_KIND)]
    targets += [(attention_path(out_dir, stem), ATTENTION_KIND) for stem in stems]
    earlier = [path for path, kind in targets if check_target(path, kind, overwrite)]
    if earlier and not overwrite:
        raise MILError(f"{out_dir}: holds a finished run ({earlier[0].relative_to(out_dir)}); pass"
                       " --overwrite or choose another --out")


def _train_fold(
    student: Any, bags: Sequence[SlideBag], table: LabelTable, train: np.ndarray, k: int, seed: int,
    settings: FinetuneSettings, device: torch.device, norm_features: np.ndarray,
) -> tuple[Any, ABMIL, list[dict[str, Any]]]:
    """Fine-tune a fresh copy of the student with a fresh ABMIL head on the training slides.

    ABMIL standardises its inputs with the statistics of ``norm_features``: the initial
    student's embeddings of the training slides. The trained blocks move slowly (a small
    backbone learning rate), so these stay close to the fine-tuned student's.
    """
    n_classes = len(table.classes)
    distill = settings.distill_weight > 0
    model = copy.deepcopy(student).to(device)
    with seeded(seed + k):
        abmil = ABMIL(model.embed_dim, settings.hidden, settings.attn_dim, n_classes, settings.dropout)
    abmil.set_input_norm(norm_features)
    abmil = abmil.to(device)
    params = set_trainable(model, settings.blocks, distill)
    optimiser = torch.optim.AdamW(
        [{"params": params, "lr": settings.backbone_lr}, {"params": abmil.parameters(), "lr": settings.lr}],
        weight_decay=settings.weight_decay,
    )
    weight = class_weights(table.y[train], n_classes).to(device)
    rng = np.random.default_rng(seed + k)
    steps = []
    with seeded(seed + k):
        for epoch in range(settings.epochs):
            for i in rng.permutation(train):
                label = int(table.y[i])
                record = _step(model, abmil, optimiser, bags[i], label, weight, rng, settings, device)
                steps.append({"fold": k, "epoch": epoch, "slide": bags[i].stem, **record})
    return model.eval(), abmil.eval(), steps


def _initial_features(
    bags: Sequence[SlideBag], student: Any, settings: FinetuneSettings, seed: int
) -> list[np.ndarray]:
    """The untrained student's embeddings of up to ``max_patches`` random patches per slide."""
    rng = np.random.default_rng(seed)
    out = []
    for bag in bags:
        n = min(len(bag.coords), settings.max_patches)
        coords = bag.coords[np.sort(rng.choice(len(bag.coords), n, replace=False))]
        batches = iter_patch_batches(bag.path, coords, settings.mpp, settings.patch_size,
                                     settings.batch_size, settings.workers, settings.mpp_override)
        feats, _ = embed_patches(student, batches, n, device=settings.device, precision=settings.precision,
                                 progress=False)
        out.append(feats)
    return out


def _predict_held_out(
    model: Any, abmil: ABMIL, bags: Sequence[SlideBag], test: np.ndarray, settings: FinetuneSettings,
    device: torch.device, prob: np.ndarray,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Embed every patch of each held-out slide with the fold's student; fill ``prob`` and
    return each slide's (attention weights, logits)."""
    attention = {}
    for i in test:
        bag = bags[i]
        batches = iter_patch_batches(bag.path, bag.coords, settings.mpp, settings.patch_size,
                                     settings.batch_size, settings.workers, settings.mpp_override)
        feats, _ = embed_patches(model, batches, len(bag.coords), device=str(device),
                                 precision=settings.precision, progress=False)
        prob[i], weights, logits = predict_bag(abmil, feats)
        attention[int(i)] = (weights, logits)
    return attention


def _memory_report(student: Any, settings: FinetuneSettings, device: torch.device) -> dict[str, Any]:
    return {
        "activation_bytes_estimate": activation_bytes_estimate(
            settings.max_patches, settings.blocks, tokens=tokens_per_patch(student), width=student.width,
            mlp_ratio=mlp_ratio(student), checkpointing=settings.checkpointing,
            bytes_per_value=2 if settings.precision == "bf16" else 4,
        ),
        "peak_rss_bytes": peak_rss(),  # of the whole process, teacher targets included
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def _step(
    model: Any, abmil: ABMIL, optimiser: Any, bag: SlideBag, label: int, weight: torch.Tensor,
    rng: np.random.Generator, settings: FinetuneSettings, device: torch.device,
) -> dict[str, float]:
    """One optimisation step on a random sub-bag of one slide; returns the loss terms."""
    m = min(len(bag.coords), settings.max_patches)
    idx = np.sort(rng.choice(len(bag.coords), m, replace=False))
    images = _read_patches(bag.path, bag.coords[idx], settings.mpp, settings.patch_size, settings)
    x = model.preprocess(images)
    train_mode(model, settings.blocks)
    abmil.train()
    with _autocast(device, settings.precision), checkpointed(model, settings.blocks, settings.checkpointing):
        cls, grid = model.embed(x, tokens=True)
        logits, _ = abmil(cls)
        ce = F.cross_entropy(logits[None].float(), torch.tensor([label], device=device), weight=weight)
        distill = torch.zeros((), device=device)
        if settings.distill_weight > 0:
            targets = torch.from_numpy(read_targets(bag.targets, idx)).to(device)  # type: ignore[arg-type]
            distill = distillation_loss(cls, grid, targets, model.heads).total.float()
        loss = ce + settings.distill_weight * distill
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return {"loss": loss.item(), "ce": ce.item(), "distill": distill.item(), "patches": m}


# ---- from the command line ----------------------------------------------------------------
def run_finetune(
    csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    slides_dir: str | os.PathLike[str] | None = None,
    student: str = "xmag",
    student_weights: str = "auto",
    teacher: str = "uni2-h",
    teacher_weights: str = "auto",
    teacher_cache: str | os.PathLike[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    settings: FinetuneSettings | None = None,
    overwrite: bool = False,
    tiny: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load the labels, the slides and the models by name or path, then :func:`finetune_cv`.

    ``tiny`` builds the registry's small test configurations (with random weights).
    """
    settings = _resolved(settings or FinetuneSettings())
    table = read_labels(csv)
    if table.kind != "slide":
        raise MILError(f"{table.path}: fine-tuning needs one label per slide (slide,label)")
    stratified_folds(table.y, folds, seed, unit="slides")  # fail before loading any model
    paths = resolve_slides(table, slides_dir)
    _check_outputs(Path(out_dir), table.stems, folds, overwrite)  # before any model is built
    distill = settings.distill_weight > 0
    student_model = create_model(student, weights=student_weights, heads=True if distill else None, tiny=tiny)
    teacher_model = create_model(teacher, weights=teacher_weights, tiny=tiny) if distill else None
    crop = teacher_model.input_size[0] if teacher_model is not None else 224
    bags = prepare_bags(table, paths, settings, crop_size=crop)
    return finetune_cv(
        table, bags, student_model, out_dir, teacher=teacher_model, teacher_cache=teacher_cache,
        folds=folds, seed=seed, settings=settings, overwrite=overwrite, log=log,
    )
