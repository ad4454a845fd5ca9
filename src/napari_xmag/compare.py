"""Student at 5x against teacher at 20x on the same tissue: cosine, CKA, cluster agreement, time.

For every 5x patch the student sees 224 px at 2.0 µm/px and the teacher sees the same field of
view as 4 x 4 crops of 224 px at 0.5 µm/px; the teacher's patch embedding is the mean of its
crop embeddings. The two feature sets are then compared three ways:

* per-patch cosine in teacher space, through the student's distillation head when it has a
  trained one, else through a ridge map fitted on half of the patches and scored on the other;
* linear CKA between the two feature sets (no mapping needed);
* the adjusted Rand index between k-means clusterings of each side.

The result is ``OUT/compare.h5`` (arrays) and ``OUT/report.json`` (numbers and provenance),
read back by :func:`read_comparison`. numpy and scikit-learn here; torch only through the
models and the embedding pipeline.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .embed import NoTissueError, embed_patches, iter_patch_batches
from .features import FeatureFileError
from .slide import MissingMppError, Slide, SlideError
from ._atomic import OutputKind, atomic_path, check_output_folder, check_target, json_kind, read_small_json

__all__ = [
    "ComparisonFileError",
    "ComparisonResult",
    "RoiError",
    "adjusted_rand",
    "compare_slide",
    "cosine_rows",
    "kmeans_labels",
    "linear_cka",
    "parse_roi",
    "read_comparison",
    "ridge_map",
    "spatial_split",
]

ARRAYS_NAME = "compare.h5"
REPORT_NAME = "report.json"
FORMAT = "napari-xmag-comparison"
FORMAT_VERSION = 1
MAPPINGS = ("auto", "head", "ridge")
#: Ridge penalties tried by leave-one-out CV (on standardised student features).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 7))
#: With fewer training patches than this, LOO CV is meaningless: a fixed alpha is used.
RIDGE_MIN_CV = 3
RIDGE_FIXED_ALPHA = 1.0
#: Side, in 5x patches, of the checkerboard squares that split train from held-out patches.
SPLIT_BLOCK = 4
#: The two files of a comparison folder, and how each is known to be ours.
REPORT_KIND = json_kind("comparison report", FORMAT)


def _is_arrays_file(path: Path) -> bool:
    """An h5 of ours: its ``format`` attribute, or (older files) the report it carries."""
    try:
        import h5py

        if not path.is_file() or path.is_symlink():
            return False
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FORMAT:
                return True
            return json.loads(str(f.attrs.get("report", "{}"))).get("format") == FORMAT
    except Exception:  # any file at all: not ours
        return False


ARRAYS_KIND = OutputKind("comparison arrays file", _is_arrays_file)


class RoiError(SlideError):
    """The region of interest does not fit the slide or its 5x patch grid."""


class ComparisonFileError(FeatureFileError):
    """A comparison folder is missing, incomplete or not ours."""


# ---- metrics --------------------------------------------------------------------------------
def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two feature sets over the same N rows.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``.
    1 for the same features, invariant to orthogonal transforms and isotropic scaling of
    either side; NaN when one side has no variance (fewer than two distinct rows).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"CKA needs two (N, D) arrays over the same rows, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``, (N,) float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(1) / denom, np.nan)


def kmeans_labels(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means cluster labels (N,) int, seeded so a rerun gives the same partition."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if k < 1 or k > len(features):
        raise ValueError(f"k-means needs 1 <= k <= N patches, got k={k}, N={len(features)}")
    with warnings.catch_warnings():
        # Identical rows give fewer distinct clusters than k; the labels are still a partition.
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(np.asarray(features, np.float64))
    return km.labels_.astype(np.int32)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings: 1 for the same partition, ~0 for unrelated ones."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


# ---- the ridge map ---------------------------------------------------------------------------
def spatial_split(coords: np.ndarray, step: float, block: int = SPLIT_BLOCK) -> tuple[np.ndarray, int]:
    """Held-out mask (N,) bool and the block size used: a checkerboard of ``block`` x ``block``
    patch squares, so neighbouring (correlated) patches mostly fall on the same side.

    The block is halved until both sides have patches; a single patch cannot be split.
    """
    cells = np.rint(np.asarray(coords, np.float64) / step).astype(np.int64)
    while block >= 1:
        held = ((cells // block).sum(axis=1) % 2).astype(bool)
        if held.any() and not held.all():
            return held, block
        block //= 2
    raise ValueError(
        f"a ridge map needs at least two patches to fit on one and score the other, got {len(coords)};"
        " enlarge the ROI or use a student with a distillation head"
    )


def ridge_map(
    student: np.ndarray, teacher: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, float]:
    """Fit student -> teacher on the ``train`` rows; return predictions for all rows and alpha.

    Student features are standardised (on the training rows) so one alpha grid suits every
    model; alpha is picked by leave-one-out CV over :data:`RIDGE_ALPHAS`, or fixed at
    :data:`RIDGE_FIXED_ALPHA` with fewer than :data:`RIDGE_MIN_CV` training rows.
    """
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = np.asarray(train, bool)
    if int(train.sum()) >= RIDGE_MIN_CV:
        reg: Any = RidgeCV(alphas=RIDGE_ALPHAS)
    else:
        reg = Ridge(alpha=RIDGE_FIXED_ALPHA)
    pipe = make_pipeline(StandardScaler(), reg)
    pipe.fit(np.asarray(student[train], np.float64), np.asarray(teacher[train], np.float64))
    alpha = float(getattr(reg, "alpha_", RIDGE_FIXED_ALPHA))
    return pipe.predict(np.asarray(student, np.float64)), alpha


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
    return values  # type: ignore[return-value]


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


# ---- the result -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ComparisonResult:
    """One comparison: arrays aligned on the N student patches, and the report.

    ``cosine`` is NaN where a patch was not scored (the ridge map's training patches);
    ``scored`` says which were.
    """

    out_dir: Path
    report: dict[str, Any]
    coords: np.ndarray  # (N, 2) int64 level-0 x, y of each 5x patch
    crop_coords: np.ndarray  # (N, n*n, 2) int64 level-0 x, y of its teacher crops, row-major
    tissue: np.ndarray  # (N,) tissue fraction of each 5x patch
    student_features: np.ndarray  # (N, Ds) float32
    teacher_features: np.ndarray  # (N, Dt) float32, mean of the crops
    teacher_crop_features: np.ndarray  # (N, n*n, Dt) float32
    cosine: np.ndarray  # (N,) float32, NaN where not scored
    scored: np.ndarray  # (N,) bool
    student_clusters: np.ndarray  # (N,) int32
    teacher_clusters: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def mapping(self) -> str:
        return str(self.report["mapping"])

    @property
    def cka(self) -> float | None:
        return self.report["cka"]

    @property
    def ari(self) -> float | None:
        return self.report["ari"]

    @property
    def speedup(self) -> float | None:
        return self.report["speedup"]

    @property
    def patch_size_level0(self) -> float:
        return float(self.report["student"]["patch_size_level0"])

    def summary(self) -> str:
        r = self.report
        cos = r["cosine"]
        sec = r["seconds"]

        def num(v: float | None, fmt: str = ".3f") -> str:
            return "n/a" if v is None else format(v, fmt)

        return (
            f"{Path(r['slide']).name}: {r['patches']['student']} patches at {r['student']['mpp']:g} µm/px,"
            f" {r['patches']['teacher']} teacher crops at {r['teacher']['mpp']:g} µm/px\n"
            f"cosine ({r['mapping']}, {cos['scored']} scored): mean {num(cos['mean'])},"
            f" median {num(cos['median'])}, min {num(cos['min'])}\n"
            f"CKA {num(r['cka'])}, ARI {num(r['ari'])} (k={r['clusters']})\n"
            f"student {sec['student']:.1f} s, teacher {sec['teacher']:.1f} s,"
            f" speed-up {num(r['speedup'], '.1f')}x\n"
            f"-> {self.out_dir}"
        )


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
    student_mpp: float | str = "5x",
    teacher_mpp: float | str = "20x",
    patch_size: int = 224,
    crop_size: int = 224,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
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
    Writes ``out_dir/compare.h5`` and ``out_dir/report.json`` atomically; files of those names
    that are not a comparison of ours are refused before any work, unless ``overwrite``.
    """
    from .tiling import pair_geometry, patch_grid, tissue_mask

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
        if slide.mpp is None:
            raise MissingMppError(
                f"{slide_path}: the slide records no µm per pixel, so 5x and 20x fields of view"
                " cannot be cut; pass --mpp-override with the scan's level-0 µm/px"
            )
        slide.check_readable()
        grid = patch_grid(slide, student_mpp, patch_size, min_tissue=0.0, mask=tissue_mask(slide))
        coords, tissue = _select_patches(slide, grid, roi, tissue_threshold)
        pairs = pair_geometry(grid, slide, teacher_mpp, crop_size)
        crop_coords = pairs.crop_coords(coords)
        slide_info = {"mpp": slide.mpp, "mpp_source": slide.mpp_source, "dimensions": list(slide.dimensions)}
    tiling_s = time.perf_counter() - start

    n, per = len(coords), pairs.crops_per_patch
    report_s, report_t = _split_progress(progress, n, n * per)
    embed_kw: dict[str, Any] = {"device": device, "precision": precision, "cancel": cancel}

    start = time.perf_counter()
    batches = iter_patch_batches(slide_path, coords, grid.mpp, patch_size, batch_size, workers, mpp_override)
    s_feats, _ = embed_patches(student, batches, n, progress=report_s, description="student 5x",
                               **embed_kw)
    student_s = time.perf_counter() - start

    start = time.perf_counter()
    flat = crop_coords.reshape(-1, 2)
    batches = iter_patch_batches(
        slide_path, flat, pairs.teacher_mpp, crop_size, batch_size, workers, mpp_override
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
            "cosine_in_sample": _stats(cosine_rows(mapped, t_feats)[~held]),
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
        "cosine": _stats(cosine[scored]),
        "cka": _finite(linear_cka(s_feats, t_feats)),
        "clusters": k,
        "clusters_requested": clusters,
        "cluster_seed": seed,
        "ari": _finite(adjusted_rand(s_labels, t_labels)),
        "seconds": {
            "tiling": round(tiling_s, 3),
            "student_embed": round(student_s, 3),
            "teacher_embed": round(teacher_s, 3),
            "student": round(student_total, 3),
            "teacher": round(teacher_total, 3),
        },
        "speedup": _finite(teacher_total / student_total) if student_total > 0 else None,
        "device": _device_name(device),
        "precision": precision,
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
    import torch

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
    from .models import resolve_device

    return str(resolve_device(device))


def _model_info(model: Any) -> dict[str, Any]:
    w = model.weights
    return {
        "model": model.spec.name,
        "embed_dim": int(model.embed_dim),
        "tiny": bool(getattr(model, "tiny", False)),
        "weights": {"source": w.source, "sha256": w.sha256, "random": bool(w.random), "heads": w.heads},
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN: undefined values are null."""
    return float(value) if math.isfinite(value) else None


def _stats(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"scored": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "scored": len(values),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


# ---- files ----------------------------------------------------------------------------------
_ARRAYS = (
    "coords", "crop_coords", "tissue", "student_features", "teacher_features",
    "teacher_crop_features", "cosine", "scored", "student_clusters", "teacher_clusters",
)


def check_comparison_folder(out_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder whose ``report.json`` or ``compare.h5`` is not a
    comparison of ours (unless ``overwrite``); other files there are never touched."""
    out = Path(out_dir)
    check_output_folder(out)
    check_target(out / REPORT_NAME, REPORT_KIND, overwrite)
    check_target(out / ARRAYS_NAME, ARRAYS_KIND, overwrite)


def write_comparison(result: ComparisonResult, *, overwrite: bool = False) -> Path:
    """Write ``compare.h5`` then ``report.json``, each to a temporary sibling renamed into place.

    ``report.json`` goes last and is removed first, so a folder with a report has the arrays
    that belong to it.
    """
    import h5py

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.report, indent=2, allow_nan=False)
    check_comparison_folder(out, overwrite)  # both files, before either is touched
    (out / REPORT_NAME).unlink(missing_ok=True)
    with atomic_path(out / ARRAYS_NAME, ARRAYS_KIND, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        for name in _ARRAYS:
            f.create_dataset(name, data=getattr(result, name))
        f.attrs["report"] = text  # the h5 file describes itself too
    with atomic_path(out / REPORT_NAME, REPORT_KIND, overwrite=overwrite) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return out


def read_comparison(out_dir: str | os.PathLike[str]) -> ComparisonResult:
    """Read a folder written by :func:`compare_slide` back into a :class:`ComparisonResult`."""
    from .formats import h5

    out = Path(out_dir)
    report_path, arrays_path = out / REPORT_NAME, out / ARRAYS_NAME
    if not report_path.is_file() or not arrays_path.is_file():
        raise ComparisonFileError(f"{out}: not a finished comparison (needs {REPORT_NAME} and {ARRAYS_NAME})")
    report = read_small_json(report_path)
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ComparisonFileError(f"{out}: not a readable comparison ({REPORT_NAME} is not a report of ours)")
    try:
        with h5.open_h5(arrays_path, ComparisonFileError, "comparison arrays file") as f:
            arrays = {name: h5.read(f, name, arrays_path, ComparisonFileError) for name in _ARRAYS}
    except (OSError, KeyError, ValueError) as err:
        raise ComparisonFileError(f"{out}: not a readable comparison ({err})") from None
    return ComparisonResult(out_dir=out, report=report, **arrays)
