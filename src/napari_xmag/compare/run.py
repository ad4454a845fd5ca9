"""Student at 5x against teacher at 20x on the same tissue: the run that makes a comparison.

For every 5x patch the student sees 224 px at 2.0 µm/px and the teacher sees the same field of
view as 4 x 4 crops of 224 px at 0.5 µm/px; the teacher's patch embedding is the mean of its
crop embeddings. The two feature sets are then compared three ways:

* per-patch cosine in teacher space, through the student's distillation head when it has a
  trained one, else through a ridge map fitted on half of the patches and scored on the other;
* linear CKA between the two feature sets (no mapping needed);
* the adjusted Rand index between k-means clusterings of each side.

torch only through the models and the embedding pipeline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..embed import embed_patches, iter_patch_batches
from ..maps import kmeans_labels
from ..models.precision import inference_precision, resolve_device
from ..provenance import model_identity
from ..slide import MAGNIFICATION_MPP, Slide, SlideError
from ..stain import fit_stain_normalizer
from ..tiling import NoTissueError, slide_pairs
from .metrics import (
    RIDGE_MIN_CV,
    adjusted_rand,
    cosine_rows,
    finite,
    linear_cka,
    ridge_map,
    spatial_split,
    stats,
)
from .result import FORMAT, FORMAT_VERSION, ComparisonResult, check_comparison_folder, write_comparison
from .tables import cluster_rows, weakest_cluster

__all__ = ["MAPPINGS", "RoiError", "compare_slide", "parse_roi"]

MAPPINGS = ("auto", "head", "ridge")
class RoiError(SlideError):
    """The region of interest does not fit the slide or its 5x patch grid."""


# ---- the region of interest -----------------------------------------------------------------
def parse_roi(text: str | Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` (level-0 px) or a 4-sequence -> a tuple of ints; None stays None."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"ROI must be four integers x,y,w,h in level-0 pixels, got {text!r}")
    if values[2] <= 0 or values[3] <= 0:
        raise ValueError(f"ROI width and height must be positive, got {text!r}")
    x, y, w, h = values
    return x, y, w, h


def _select_patches(
    slide: Slide, grid: Any, roi: tuple[int, int, int, int] | None, tissue_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coords and tissue of the grid's patches with enough tissue, inside the ROI if any."""
    size = grid.patch_size_level0
    keep = np.ones(len(grid), bool)
    where = "the slide"
    if roi is not None:
        x, y, w, h = roi
        width, height = slide.dimensions
        where = f"ROI {x},{y},{w},{h}"
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise RoiError(f"{slide.path}: {where} lies outside the {width} x {height} px slide")
        if w < size or h < size:
            raise RoiError(
                f"{slide.path}: {where} is smaller than one {grid.patch_size} px patch at"
                f" {grid.mpp:g} µm/px ({size:.1f} x {size:.1f} level-0 px)"
            )
        # Patches wholly inside the ROI; the grid is the slide's own, not re-anchored on it.
        x0, y0 = grid.coords[:, 0], grid.coords[:, 1]
        keep = (x0 >= x) & (y0 >= y) & (x0 + size <= x + w + 1e-6) & (y0 + size <= y + h + 1e-6)
        if not keep.any():
            raise RoiError(
                f"{slide.path}: {where} holds no whole patch of the slide's {grid.mpp:g} µm/px grid"
                f" (origins every {grid.step_level0} level-0 px from 0,0); enlarge or shift it"
            )
    inside = keep.sum()
    keep &= grid.tissue >= tissue_threshold
    if not keep.any():
        raise NoTissueError(
            f"{slide.path}: none of the {inside} {grid.patch_size} px patches at {grid.mpp:g} µm/px"
            f" in {where} holds {tissue_threshold:.0%} tissue"
        )
    return grid.coords[keep], grid.tissue[keep]


# ---- the comparison -------------------------------------------------------------------------
def compare_slide(
    slide_path: str | os.PathLike[str],
    student: Any,
    teacher: Any,
    out_dir: str | os.PathLike[str],
    roi: tuple[int, int, int, int] | str | None = None,
    *,
    clusters: int = 8,
    mapping: str = "auto",
    tissue_threshold: float = 0.25,
    mpp_override: float | None = None,
    student_mpp: float | str = MAGNIFICATION_MPP["5x"],
    teacher_mpp: float | str = MAGNIFICATION_MPP["20x"],
    patch_size: int = 224,
    crop_size: int = 224,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    stain_norm: str = "none",
    stain_reference: str | os.PathLike[str] | None = None,
    progress: bool | Callable[[int, int], None] = True,
    cancel: threading.Event | None = None,
    overwrite: bool = False,
) -> ComparisonResult:
    """Embed the same tissue with ``student`` (5x patches) and ``teacher`` (20x crops); compare.

    ``student`` and ``teacher`` are :class:`~napari_xmag.models.XmagModel` instances. ``roi``
    is ``(x, y, w, h)`` in level-0 px (or ``"x,y,w,h"``): only the slide grid's patches wholly
    inside it are used. ``mapping``: ``"head"`` (the student's global distillation head),
    ``"ridge"`` (a ridge map fitted on half the patches, scored on the rest) or ``"auto"``
    (the head when it is a trained one that outputs the teacher's width, else ridge).
    ``progress`` is True (bars), False, or ``callable(done, total)`` over student patches plus
    teacher crops. ``cancel`` stops between batches (EmbedCancelled) and nothing is written.
    ``stain_norm`` (``"macenko"``, ``"reinhard"``): the slide's stain brought to ``stain_reference``
    (an image; None: the bundled one), fitted once on its tissue and applied to both sides' patches.
    Writes ``out_dir/compare.h5`` and ``out_dir/report.json`` atomically; files of those names
    that are not a comparison of ours are refused before any work, unless ``overwrite``.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, not {mapping!r}")
    if clusters < 1:
        raise ValueError(f"clusters must be at least 1, got {clusters}")
    roi = parse_roi(roi)
    method = _choose_mapping(mapping, student, teacher)
    check_comparison_folder(out_dir, overwrite)
    slide_path = Path(slide_path)

    # Tiling is shared: both sides need the same 5x grid (the teacher's crops hang from it).
    start = time.perf_counter()
    with Slide(slide_path, mpp=mpp_override) as slide:
        slide.require_mpp("its 5x and 20x fields of view cannot be cut")
        slide.check_readable()
        paired = slide_pairs(slide, student_mpp, teacher_mpp, patch_size, crop_size, min_tissue=0.0)
        grid, pairs = paired.grid, paired.pairs
        coords, tissue = _select_patches(slide, grid, roi, tissue_threshold)
        crop_coords = paired.crop_coords(coords)
        normalizer = fit_stain_normalizer(slide, stain_norm, stain_reference)
        slide_info = {"mpp": slide.mpp, "mpp_source": slide.mpp_source, "dimensions": list(slide.dimensions)}
    tiling_s = time.perf_counter() - start

    n, per = len(coords), pairs.crops_per_patch
    report_s, report_t = _split_progress(progress, n, n * per)
    embed_kw: dict[str, Any] = {"device": device, "precision": precision, "cancel": cancel}

    start = time.perf_counter()
    batches = iter_patch_batches(slide_path, coords, grid.mpp, patch_size, batch_size, workers, mpp_override,
                                 normalizer)
    s_feats, _ = embed_patches(student, batches, n, progress=report_s, description="student 5x",
                               **embed_kw)
    student_s = time.perf_counter() - start

    start = time.perf_counter()
    flat = crop_coords.reshape(-1, 2)
    batches = iter_patch_batches(
        slide_path, flat, pairs.teacher_mpp, crop_size, batch_size, workers, mpp_override, normalizer
    )
    t_crops, _ = embed_patches(teacher, batches, len(flat), progress=report_t, description="teacher 20x",
                               **embed_kw)
    teacher_s = time.perf_counter() - start
    t_crops = t_crops.reshape(n, per, -1)
    t_feats = t_crops.mean(axis=1)

    # Per-patch cosine in teacher space.
    ridge_info: dict[str, Any] | None = None
    if method == "head":
        mapped = _apply_head(student, s_feats)
        scored = np.ones(n, bool)
    else:
        held, block = spatial_split(coords, grid.step_level0)
        mapped, alpha = ridge_map(s_feats, t_feats, ~held)
        scored = held
        ridge_info = {
            "alpha": alpha,
            "alpha_by": "leave-one-out CV" if int((~held).sum()) >= RIDGE_MIN_CV else "fixed",
            "standardised": True,
            "split": f"checkerboard of {block} x {block} patch blocks",
            "train": int((~held).sum()),
            "held_out": int(held.sum()),
            "cosine_in_sample": stats(cosine_rows(mapped, t_feats)[~held]),
        }
    cosine = np.where(scored, cosine_rows(mapped, t_feats), np.nan).astype(np.float32)

    k = min(clusters, n)
    s_labels = kmeans_labels(s_feats, k, seed)
    t_labels = kmeans_labels(t_feats, k, seed)

    student_total, teacher_total = tiling_s + student_s, tiling_s + teacher_s
    report = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slide": str(slide_path),
        "slide_mpp": slide_info["mpp"],
        "mpp_source": slide_info["mpp_source"],
        "slide_dimensions": slide_info["dimensions"],
        "roi": list(roi) if roi is not None else None,
        "tissue_threshold": tissue_threshold,
        "stain_norm": stain_norm,
        "stain_reference": "" if normalizer is None else normalizer.reference,
        "student": {
            **_model_info(student),
            "mpp": grid.mpp,
            "patch_size": patch_size,
            "patch_size_level0": grid.patch_size_level0,
            "level": grid.level,
        },
        "teacher": {
            **_model_info(teacher),
            "mpp": pairs.teacher_mpp,
            "crop_size": crop_size,
            "crop_size_level0": pairs.crop_size_level0,
            "crops_per_side": pairs.crops_per_side,
            "level": pairs.teacher_level,
            "pooling": "mean of the crop embeddings",
        },
        "patches": {"student": n, "teacher": n * per},
        "mapping": method,
        "ridge": ridge_info,
        "cosine": stats(cosine[scored]),
        "cka": finite(linear_cka(s_feats, t_feats)),
        "clusters": k,
        "clusters_requested": clusters,
        "cluster_seed": seed,
        "ari": finite(adjusted_rand(s_labels, t_labels)),
        "weakest_cluster": weakest_cluster(cluster_rows(cosine, scored, s_labels)),
        "seconds": {
            "tiling": round(tiling_s, 3),
            "student_embed": round(student_s, 3),
            "teacher_embed": round(teacher_s, 3),
            "student": round(student_total, 3),
            "teacher": round(teacher_total, 3),
        },
        "speedup": finite(teacher_total / student_total) if student_total > 0 else None,
        "device": _device_name(device),
        "precision": inference_precision(precision, resolve_device(device), bool(student.weights.random)),
        "precision_teacher": inference_precision(precision, resolve_device(device),
                                                 bool(teacher.weights.random)),
        "precision_requested": precision,
        "batch_size": batch_size,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "xmag_version": __version__,
    }
    result = ComparisonResult(
        out_dir=Path(out_dir),
        report=report,
        coords=np.asarray(coords, np.int64),
        crop_coords=np.asarray(crop_coords, np.int64),
        tissue=np.asarray(tissue, np.float32),
        student_features=s_feats.astype(np.float32),
        teacher_features=t_feats.astype(np.float32),
        teacher_crop_features=t_crops.astype(np.float32),
        cosine=cosine,
        scored=scored,
        student_clusters=s_labels,
        teacher_clusters=t_labels,
    )
    write_comparison(result, overwrite=overwrite)
    return result


def _choose_mapping(mapping: str, student: Any, teacher: Any) -> str:
    """"head" or "ridge". Auto takes the head only when it is trained and fits the teacher."""
    head = _global_head(student)
    fits = head is not None and getattr(head, "out_dim", None) == teacher.embed_dim
    # A fresh head on a trained backbone is noise; on an all-random model everything is.
    trained = student.weights.heads == "checkpoint" or student.weights.random
    if mapping == "head":
        if not fits:
            raise ValueError(
                f"{student.spec.name}: no global distillation head mapping to {teacher.spec.name}'s"
                f" {teacher.embed_dim} dims; use mapping 'ridge'"
            )
        return "head"
    if mapping == "auto" and fits and trained:
        return "head"
    return "ridge"


def _global_head(model: Any) -> Any:
    heads = getattr(model, "heads", None)
    return heads["global"] if heads is not None and "global" in heads else None


def _apply_head(student: Any, features: np.ndarray) -> np.ndarray:
    """The student's global head on its CLS token (the first ``width`` columns of its embedding)."""
    import torch  # the models' library: imported with the models, not with this module

    head = _global_head(student)
    param = next(head.parameters())
    cls = torch.from_numpy(np.ascontiguousarray(features[:, : student.width]))
    with torch.inference_mode():
        out = head.eval()(cls.to(param.device, param.dtype))
    return out.float().cpu().numpy()


def _split_progress(
    progress: bool | Callable[[int, int], None], n_student: int, n_teacher: int
) -> tuple[Any, Any]:
    """One callable over both sides (student patches, then teacher crops), or bars as asked."""
    if not callable(progress):
        return progress, progress
    total = n_student + n_teacher
    return (lambda done, _: progress(done, total)), (lambda done, _: progress(n_student + done, total))


def _device_name(device: str) -> str:
    from ..models import resolve_device  # torch: only where a run has models already

    return str(resolve_device(device))


def _model_info(model: Any) -> dict[str, Any]:
    """The report's side of a model: its identity (:func:`model_identity`), weights nested."""
    who = model_identity(model)
    return {
        "model": who["model"], "embed_dim": who["embed_dim"], "tiny": who["tiny"],
        "weights": {"source": who["weights_source"], "sha256": who["weights_sha256"] or None,
                    "random": who["weights_random"], "heads": who["weights_heads"]},
    }


