"""Student at 5x against teacher at 20x on the same tissue: cosine, CKA, cluster agreement, time.

``metrics`` (cosine, CKA, ARI, the ridge map), ``run`` (:func:`compare_slide`), ``result``
(:class:`ComparisonResult`, its files, the report for people, the cosine map).
"""

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
    read_comparison,
    report_rows,
    write_comparison,
)
from .run import MAPPINGS, RoiError, compare_slide, parse_roi

__all__ = [
    "ARRAYS_NAME",
    "FORMAT",
    "MAPPINGS",
    "REPORT_NAME",
    "SMALL_SAMPLE",
    "ComparisonFileError",
    "ComparisonResult",
    "RoiError",
    "adjusted_rand",
    "check_comparison_folder",
    "compare_slide",
    "cosine_map",
    "cosine_rows",
    "linear_cka",
    "matched_labels",
    "parse_roi",
    "read_comparison",
    "report_rows",
    "ridge_map",
    "spatial_split",
    "write_comparison",
]
