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

