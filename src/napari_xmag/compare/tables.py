"""Where the student disagrees with the teacher, as tables: the patches ranked by their cosine,
and the cosine per tissue cluster; their CSV files in a comparison folder.

Arrays in, rows out: numpy only, below :mod:`.result` (which writes the CSVs with the rest of a
comparison) and :mod:`.disagreement` (the calls on a comparison, its map and its pictures).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import OutputKind, atomic_path
from ..maps.slide_map import cluster_names

__all__ = [
    "CLUSTERS_KIND",
    "CLUSTERS_NAME",
    "CLUSTER_COLUMNS",
    "RANKING_COLUMNS",
    "RANKING_KIND",
    "RANKING_NAME",
    "ClusterRow",
    "RankedPatch",
    "cluster_rows",
    "ranked_patches",
    "weakest_cluster",
    "write_clusters_csv",
    "write_ranking_csv",
]

RANKING_NAME = "disagreement.csv"
CLUSTERS_NAME = "clusters.csv"
#: The fixed columns; the ranking's 16 crop origins follow as crop0_x, crop0_y, ... crop15_y.
RANKING_COLUMNS = ("rank", "patch", "x", "y", "cosine", "cluster")
CLUSTER_COLUMNS = ("cluster", "name", "patches", "scored", "mean_cosine", "median_cosine", "min_cosine",
                   "share")


def _header_kind(name: str, columns: Sequence[str]) -> OutputKind:
    """A CSV of ours: its first line starts with our header (a CSV has no other place for a mark)."""
    prefix = ",".join(columns)

    def is_ours(path: Path) -> bool:
        try:
            if path.is_symlink() or not path.is_file():
                return False
            with path.open("r", encoding="utf-8", newline="") as f:
                first = f.readline(4096).rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            return False
        return first == prefix or first.startswith(prefix + ",")

    return OutputKind(name, is_ours)


RANKING_KIND = _header_kind("comparison disagreement ranking", RANKING_COLUMNS)
CLUSTERS_KIND = _header_kind("comparison cluster table", CLUSTER_COLUMNS)


@dataclass(frozen=True)
class RankedPatch:
    """One 5x patch in the ranking: ``rank`` 1 is the patch where the student agrees least."""

    rank: int
    patch: int  # index into the comparison's arrays
    x: int  # level-0 top-left of the 5x patch
    y: int
    cosine: float
    cluster: int  # the student's k-means cluster (1..K)
    crops: tuple[tuple[int, int], ...]  # level-0 origins of its teacher crops, row-major

    def row(self) -> list[Any]:
        """The CSV row: the fixed columns, then each crop's x, y."""
        return [self.rank, self.patch, self.x, self.y, _float(self.cosine), self.cluster,
                *(v for xy in self.crops for v in xy)]


@dataclass(frozen=True)
class ClusterRow:
    """The cosine over one student cluster's patches (NaN statistics where none was scored)."""

    cluster: int
    name: str
    patches: int
    scored: int
    mean: float
    median: float
    lowest: float
    share: float  # of the compared patches

    def row(self) -> list[Any]:
        return [self.cluster, self.name, self.patches, self.scored, _float(self.mean),
                _float(self.median), _float(self.lowest), _float(self.share)]


def _float(value: float) -> str:
    """Exact (the shortest repr that reads back the same), empty for NaN."""
    return "" if not math.isfinite(value) else repr(float(value))


def _scored(cosine: np.ndarray, scored: np.ndarray | None) -> np.ndarray:
    cosine = np.asarray(cosine, np.float64)
    ok = np.isfinite(cosine)
    return ok if scored is None else ok & np.asarray(scored, bool)


def ranked_patches(
    cosine: np.ndarray, scored: np.ndarray | None, coords: np.ndarray, crop_coords: np.ndarray,
    clusters: np.ndarray, top: int | None = None,
) -> list[RankedPatch]:
    """The scored patches from the lowest cosine to the highest; equal cosines in patch order
    (a stable sort), so the ranking is the same on every run. Unscored patches are left out."""
    if top is not None and top < 0:
        raise ValueError(f"top must be at least 0, got {top}")
    cos = np.asarray(cosine, np.float64)
    index = np.flatnonzero(_scored(cos, scored))
    order = index[np.argsort(cos[index], kind="stable")]
    if top is not None:
        order = order[:top]
    coords, crops = np.asarray(coords), np.asarray(crop_coords)
    return [
        RankedPatch(rank=r, patch=int(i), x=int(coords[i, 0]), y=int(coords[i, 1]), cosine=float(cos[i]),
                    cluster=int(clusters[i]), crops=tuple((int(cx), int(cy)) for cx, cy in crops[i]))
        for r, i in enumerate(order, start=1)
    ]


def cluster_rows(cosine: np.ndarray, scored: np.ndarray | None, clusters: np.ndarray) -> list[ClusterRow]:
    """One row per cluster, the weakest first: by mean cosine, clusters without a scored patch
    last, equal means by cluster number. Names as everywhere else (:func:`maps.cluster_names`)."""
    cos = np.asarray(cosine, np.float64)
    ok = _scored(cos, scored)
    labels = np.asarray(clusters, np.int64)
    n = len(labels)
    names = cluster_names(int(labels.max(initial=0)))
    rows = []
    for c in np.unique(labels):
        members = labels == c
        values = cos[members & ok]
        stats = (float(values.mean()), float(np.median(values)), float(values.min())) if len(values) \
            else (math.nan,) * 3
        rows.append(ClusterRow(
            cluster=int(c), name=names[c - 1] if c >= 1 else f"label {c}", patches=int(members.sum()),
            scored=len(values), mean=stats[0], median=stats[1], lowest=stats[2],
            share=float(members.sum()) / n,
        ))
    return sorted(rows, key=lambda r: (not math.isfinite(r.mean), r.mean if math.isfinite(r.mean) else 0.0,
                                       r.cluster))


def weakest_cluster(rows: Sequence[ClusterRow]) -> dict[str, Any] | None:
    """The report's ``weakest_cluster``: the first row, when at least two clusters were scored
    (with one there is nothing to be weakest against)."""
    scored = [r for r in rows if r.scored]
    if len(scored) < 2:
        return None
    r = scored[0]
    return {"cluster": r.cluster, "name": r.name, "mean_cosine": r.mean, "scored": r.scored,
            "patches": r.patches, "share": r.share, "clusters_scored": len(scored)}


def _write_csv(path: Path, kind: OutputKind, header: Sequence[str], rows: Sequence[Sequence[Any]],
               overwrite: bool) -> Path:
    with atomic_path(path, kind, overwrite=overwrite) as tmp, \
            tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_ranking_csv(path: str | os.PathLike[str], ranking: Sequence[RankedPatch], crops: int,
                      *, overwrite: bool = False) -> Path:
    """``disagreement.csv``: the ranked patches, ``crops`` crop origins each."""
    header = [*RANKING_COLUMNS, *(f"crop{k}_{a}" for k in range(crops) for a in ("x", "y"))]
    return _write_csv(Path(path), RANKING_KIND, header, [p.row() for p in ranking], overwrite)


def write_clusters_csv(path: str | os.PathLike[str], rows: Sequence[ClusterRow], *,
                       overwrite: bool = False) -> Path:
    """``clusters.csv``: the cluster table, the weakest cluster first."""
    return _write_csv(Path(path), CLUSTERS_KIND, CLUSTER_COLUMNS, [r.row() for r in rows], overwrite)
