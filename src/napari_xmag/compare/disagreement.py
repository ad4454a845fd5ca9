"""Where the student disagrees with the teacher: the ranking, the clusters, the pictures.

From a comparison (a :class:`ComparisonResult` or its folder): :func:`disagreement_ranking`
ranks the scored patches from the least agreement to the most; :func:`cluster_agreement` gives
the cosine per student tissue cluster, the weakest first, with a map of it; and
:func:`disagreement_views` reads what each model saw of one ranked patch: the 5x patch at the
student's µm/px and the 16 crops at the teacher's, with the comparison's own geometry. No
napari, Qt or torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..maps import SlideMap, kmeans_labels
from ..slide import Slide
from ..stain import fit_stain_normalizer
from .result import ComparisonResult, patch_map, read_comparison
from .tables import ClusterRow, RankedPatch, cluster_rows, ranked_patches

__all__ = [
    "ClusterAgreement",
    "PatchViews",
    "cluster_agreement",
    "disagreement_ranking",
    "disagreement_views",
]

Comparison = ComparisonResult | str | os.PathLike[str]


def _result(comparison: Comparison) -> ComparisonResult:
    return comparison if isinstance(comparison, ComparisonResult) else read_comparison(comparison)


def disagreement_ranking(comparison: Comparison, top: int | None = None) -> list[RankedPatch]:
    """The scored patches from the lowest cosine (rank 1) to the highest, equal cosines in patch
    order; the first ``top`` only when given. Patches the ridge map was fitted on are left out."""
    r = _result(comparison)
    return ranked_patches(r.cosine, r.scored, r.coords, r.crop_coords, r.student_clusters, top)


@dataclass(frozen=True, eq=False)
class ClusterAgreement:
    """The cosine per student k-means cluster: ``rows`` the weakest cluster first, ``labels``
    (N,) the clusters used (1..K), ``map`` each patch painted with its cluster's mean cosine."""

    rows: list[ClusterRow]
    labels: np.ndarray
    k: int
    map: SlideMap

    @property
    def weakest(self) -> ClusterRow | None:
        """The cluster of the lowest mean cosine, or None when no patch was scored."""
        return self.rows[0] if self.rows and self.rows[0].scored else None

    def row(self, cluster: int) -> ClusterRow:
        return next(r for r in self.rows if r.cluster == cluster)


def cluster_agreement(comparison: Comparison, k: int | None = None) -> ClusterAgreement:
    """The cosine over each of the student's k-means clusters (the comparison's own clusters;
    refitted only for another ``k``, with the comparison's seed), the weakest cluster first."""
    r = _result(comparison)
    report = r.report
    own = {report.get("clusters"), report.get("clusters_requested")} - {None}
    labels = np.asarray(r.student_clusters, np.int32)
    if k is not None and k not in own:
        labels = kmeans_labels(r.student_features, k, int(report.get("cluster_seed") or 0))
    rows = cluster_rows(r.cosine, r.scored, labels)
    means = {row.cluster: row.mean for row in rows}
    values = np.array([means[int(c)] for c in labels], np.float64)
    n = int(labels.max(initial=0))
    smap = patch_map(r, values, f"cluster agreement (k={n})",
                     f"mean cosine of the patch's student k-means cluster (k={n}); NaN where the cluster"
                     " has no scored patch")
    return ClusterAgreement(rows=rows, labels=labels, k=n, map=smap)


@dataclass(frozen=True, eq=False)
class PatchViews:
    """What each model saw of one ranked patch: ``student`` (S, S, 3) uint8 at ``student_mpp``,
    ``crops`` (n*n, C, C, 3) uint8 at ``teacher_mpp``, row-major (crop k: row k // n, column
    k % n); ``size_level0`` is the patch's side in level-0 px."""

    patch: RankedPatch
    student: np.ndarray
    crops: np.ndarray
    student_mpp: float
    teacher_mpp: float
    size_level0: float

    @property
    def crops_per_side(self) -> int:
        return math.isqrt(len(self.crops))

    @property
    def mosaic(self) -> np.ndarray:
        """The crops as one (n*C, n*C, 3) picture, in their places: the teacher's field of view."""
        n = self.crops_per_side
        c = self.crops.shape[1]
        return self.crops.reshape(n, n, c, c, 3).transpose(0, 2, 1, 3, 4).reshape(n * c, n * c, 3)


def disagreement_views(
    comparison: Comparison, slide: Slide | str | os.PathLike[str] | None = None, rank: int = 1,
) -> PatchViews:
    """Read the patch at ``rank`` (1 = least agreement) as the student saw it and as the teacher
    did, with the comparison's geometry (patch and crop sizes, µm/px). ``slide``: an open
    :class:`Slide`, a path, or None for the comparison's own slide (with its mpp override)."""
    r = _result(comparison)
    ranking = disagreement_ranking(r)
    if not 1 <= rank <= len(ranking):
        raise ValueError(f"{r.out_dir}: rank {rank} is not between 1 and {len(ranking)}, the scored patches")
    patch = ranking[rank - 1]
    if isinstance(slide, Slide):
        return _read_views(r.report, slide, patch)
    path = slide if slide is not None else r.report["slide"]
    with Slide(path, mpp=_mpp_override(r.report) if slide is None else None) as opened:
        return _read_views(r.report, opened, patch)


def _mpp_override(report: dict[str, Any]) -> float | None:
    """The µm/px the comparison was told (it is not in the slide file), or None."""
    return float(report["slide_mpp"]) if report.get("mpp_source") == "override" else None


def _read_views(report: dict[str, Any], slide: Slide, patch: RankedPatch) -> PatchViews:
    # read as compare_slide read them (embed.iter_patch_batches): the same call, the same pixels,
    # stain-normalised as they were (fitted on the slide the same way)
    student, teacher = report["student"], report["teacher"]
    s_mpp, t_mpp = float(student["mpp"]), float(teacher["mpp"])
    reference = report.get("stain_reference") or None
    normalizer = fit_stain_normalizer(slide, str(report.get("stain_norm") or "none"),
                                      None if reference == "default" else reference)
    image = slide.read_region(patch.x, patch.y, int(student["patch_size"]), mpp=s_mpp).image
    crops = np.stack([slide.read_region(x, y, int(teacher["crop_size"]), mpp=t_mpp).image
                      for x, y in patch.crops])
    if normalizer is not None:
        image, crops = normalizer(image[None])[0], normalizer(crops)
    return PatchViews(patch=patch, student=image, crops=crops, student_mpp=s_mpp, teacher_mpp=t_mpp,
                      size_level0=float(student["patch_size_level0"]))
