"""Student at 5x against teacher at 20x on the same tissue: cosine, CKA, cluster agreement, time.

``metrics`` (cosine, CKA, ARI, the ridge map), ``run`` (:func:`compare_slide`), ``result``
(:class:`ComparisonResult`, its files, the report for people, the cosine map), ``tables`` (the
ranking and cluster tables, their CSVs) and ``disagreement`` (where the student disagrees: the
ranking, the clusters, what each model saw).
"""

from .disagreement import (
    ClusterAgreement,
    PatchViews,
    cluster_agreement,
    disagreement_ranking,
    disagreement_views,
)
from .metrics import adjusted_rand, cosine_rows, linear_cka, ridge_map, spatial_split
from .result import (
    ARRAYS_NAME,
    FORMAT,
    REPORT_NAME,
    SMALL_SAMPLE,
    ComparisonFileError,
    ComparisonResult,
    check_comparison_folder,
    cosine_map,
    matched_labels,
    patch_map,
    read_comparison,
    report_rows,
    write_comparison,
)
from .run import MAPPINGS, RoiError, compare_slide, parse_roi
from .tables import CLUSTERS_NAME, RANKING_NAME, ClusterRow, RankedPatch

__all__ = [
    "ARRAYS_NAME",
    "CLUSTERS_NAME",
    "FORMAT",
    "MAPPINGS",
    "RANKING_NAME",
    "REPORT_NAME",
    "SMALL_SAMPLE",
    "ClusterAgreement",
    "ClusterRow",
    "ComparisonFileError",
    "ComparisonResult",
    "PatchViews",
    "RankedPatch",
    "RoiError",
    "adjusted_rand",
    "check_comparison_folder",
    "cluster_agreement",
    "compare_slide",
    "cosine_map",
    "cosine_rows",
    "disagreement_ranking",
    "disagreement_views",
    "linear_cka",
    "matched_labels",
    "parse_roi",
    "patch_map",
    "read_comparison",
    "report_rows",
    "ridge_map",
    "spatial_split",
    "write_comparison",
]
