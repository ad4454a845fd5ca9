"""Comparison settings and a comparison folder written with known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cases import CMU1


def write_comparison(out: Path, coords, cosine, slide_mpp=0.499, size0=897.7955911823648):
    from napari_xmag.compare import FORMAT, ComparisonResult, write_comparison

    n = len(coords)
    report = {
        "format": FORMAT, "format_version": 1, "slide": str(CMU1.path), "slide_mpp": slide_mpp,
        "student": {"model": "xmag", "weights": {"random": True}, "mpp": 2.0, "patch_size": 224,
                    "patch_size_level0": size0},
        "teacher": {"model": "uni2-h", "weights": {"random": True}},
        "mapping": "ridge",
    }
    result = ComparisonResult(
        out_dir=out, report=report, coords=np.asarray(coords, np.int64),
        crop_coords=np.zeros((n, 16, 2), np.int64), tissue=np.ones(n, np.float32),
        student_features=np.zeros((n, 4), np.float32), teacher_features=np.zeros((n, 4), np.float32),
        teacher_crop_features=np.zeros((n, 16, 4), np.float32), cosine=np.asarray(cosine, np.float32),
        scored=np.isfinite(cosine), student_clusters=np.zeros(n, np.int32),
        teacher_clusters=np.zeros(n, np.int32),
    )
    write_comparison(result)
    return out



KW = {"progress": False, "device": "cpu", "batch_size": 8, "workers": 1, "precision": "fp32"}



# ---- a comparison made by hand: known cosines on CMU-1's 5x grid ----------------------------
# CMU-1 at 0.499 µm/px: 5x patches every 898 level-0 px, 897.8 px wide; the 20x crops of a patch
# start 0, 224, 449 and 673 px into it (as compare_slide cuts them).
CROP_OFFSETS = (0, 224, 449, 673)


def hand_result(out: Path, coords, cosine, clusters, features=None):
    """A ComparisonResult of CMU-1 with the given per-patch cosines (NaN: not scored) and
    student clusters, a full report, and the crops compare_slide would cut; not written."""
    from napari_xmag.compare import FORMAT, ComparisonResult

    coords = np.asarray(coords, np.int64)
    cosine = np.asarray(cosine, np.float32)
    n = len(coords)
    offsets = np.array([[c, r] for r in CROP_OFFSETS for c in CROP_OFFSETS], np.int64)
    scored = np.isfinite(cosine)
    fin = cosine[scored].astype(np.float64)
    stats = {"scored": int(scored.sum()), "mean": float(fin.mean()), "median": float(np.median(fin)),
             "min": float(fin.min()), "max": float(fin.max())}
    weights = {"source": "random", "sha256": None, "random": True, "heads": "none"}
    report = {
        "format": FORMAT, "format_version": 1, "slide": str(CMU1.path), "slide_mpp": 0.499,
        "mpp_source": "file", "slide_dimensions": list(CMU1.level_dimensions[0]), "roi": None,
        "tissue_threshold": 0.25,
        "student": {"model": "xmag", "embed_dim": 4, "tiny": True, "weights": weights, "mpp": 2.0,
                    "patch_size": 224, "patch_size_level0": 897.7955911823648, "level": 0},
        "teacher": {"model": "uni2-h", "embed_dim": 4, "tiny": True, "weights": weights, "mpp": 0.5,
                    "crop_size": 224, "crop_size_level0": 224.4488977955912, "crops_per_side": 4,
                    "level": 0, "pooling": "mean of the crop embeddings"},
        "patches": {"student": n, "teacher": 16 * n}, "mapping": "ridge", "ridge": None,
        "cosine": stats, "cka": None, "clusters": int(np.max(clusters)), "clusters_requested": 8,
        "cluster_seed": 0, "ari": None,
        "seconds": {"tiling": 0.1, "student_embed": 0.1, "teacher_embed": 1.0, "student": 0.2,
                    "teacher": 1.1},
        "speedup": 5.5, "device": "cpu", "precision": "fp32", "batch_size": 8,
    }
    features = np.zeros((n, 4), np.float32) if features is None else np.asarray(features, np.float32)
    return ComparisonResult(
        out_dir=Path(out), report=report, coords=coords, crop_coords=coords[:, None, :] + offsets,
        tissue=np.ones(n, np.float32), student_features=features, teacher_features=features,
        teacher_crop_features=np.repeat(features[:, None], 16, axis=1), cosine=cosine, scored=scored,
        student_clusters=np.asarray(clusters, np.int32), teacher_clusters=np.asarray(clusters, np.int32),
    )
