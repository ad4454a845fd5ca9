"""One comparison: its arrays and report, the files it is kept in, and how it is shown.

``OUT/compare.h5`` (arrays) and ``OUT/report.json`` (numbers and provenance), read back by
:func:`read_comparison`, with ``OUT/disagreement.csv`` and ``OUT/clusters.csv`` (the tables of
:mod:`.tables`) for people and spreadsheets; :func:`report_rows` is the one formatting of a
report for people (the CLI's summary and the widget's table), :func:`cosine_map` the per-patch
cosine as a map (:func:`patch_map` any per-patch value), and :func:`matched_labels` the
teacher's clusters renamed to the student's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.optimize import linear_sum_assignment

from .._atomic import (
    OutputKind,
    atomic_path,
    check_output_folder,
    check_target,
    json_kind,
    read_small_json,
    write_json,
)
from .._paths import InputFileError
from .._values import positive_float
from ..features import FeatureHeader, FeatureSet, read_header
from ..formats import h5
from ..maps import MapError, SlideMap, build_grid, rasterize_mean
from ..maps.slide_map import base_metadata, make_map, map_name
from .tables import (
    CLUSTERS_KIND,
    CLUSTERS_NAME,
    RANKING_KIND,
    RANKING_NAME,
    cluster_rows,
    ranked_patches,
    write_clusters_csv,
    write_ranking_csv,
)

__all__ = [
    "ARRAYS_KIND",
    "ARRAYS_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "REPORT_KIND",
    "REPORT_NAME",
    "SMALL_SAMPLE",
    "ComparisonFileError",
    "ComparisonResult",
    "check_comparison_folder",
    "cosine_map",
    "matched_labels",
    "patch_map",
    "read_comparison",
    "report_rows",
    "write_comparison",
]

ARRAYS_NAME = "compare.h5"
REPORT_NAME = "report.json"
FORMAT = "napari-xmag-comparison"
FORMAT_VERSION = 1
#: The two files of a comparison folder, and how each is known to be ours.
REPORT_KIND = json_kind("comparison report", FORMAT)


def _is_arrays_file(path: Path) -> bool:
    """An h5 of ours: its ``format`` attribute, or (older files) the report it carries."""
    try:

        if not path.is_file() or path.is_symlink():
            return False
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FORMAT:
                return True
            return json.loads(str(f.attrs.get("report", "{}"))).get("format") == FORMAT
    except Exception:  # any file at all: not ours
        return False


ARRAYS_KIND = OutputKind("comparison arrays file", _is_arrays_file)


class ComparisonFileError(InputFileError):
    """A comparison folder is missing, incomplete or not ours."""


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
        """The report for people, as the CLI prints it (the widget's table has the same rows)."""
        r = self.report
        rows = report_rows(r)
        return (
            f"{Path(r['slide']).name}: {rows['student patches']} patches at {r['student']['mpp']:g} µm/px,"
            f" {rows['teacher crops']} teacher crops at {r['teacher']['mpp']:g} µm/px\n"
            f"cosine {rows['cosine']}\n"
            f"CKA {rows['CKA']}, ARI {rows['ARI']}\n"
            f"student {rows['student time (s)']} s, teacher {rows['teacher time (s)']} s,"
            f" speed-up {rows['speed-up']}\n"
            + (f"weakest cluster {rows['weakest cluster']}\n" if "weakest cluster" in rows else "")
            + (f"{rows['caveat']}\n" if "caveat" in rows else "")
            + f"-> {self.out_dir}"
        )


def _number(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


#: Below this many patches, CKA, ARI and the cosine's spread say little (a caveat is added).
SMALL_SAMPLE = 30


def report_rows(report: dict[str, Any]) -> dict[str, str]:
    """A comparison report for people: row name -> formatted value (the CLI summary and the
    comparison widget's table), with a caveat when the sample is small."""
    sec, cos = report["seconds"], report["cosine"]
    random = [s for s in ("student", "teacher") if report[s]["weights"]["random"]]
    return {
        "student": f"{report['student']['model']} @ {report['student']['mpp']:g} µm/px",
        "teacher": f"{report['teacher']['model']} @ {report['teacher']['mpp']:g} µm/px",
        "weights": "RANDOM: " + ", ".join(random) if random else "real",
        "student patches": str(report["patches"]["student"]),
        "teacher crops": str(report["patches"]["teacher"]),
        "student time (s)": f"{sec['student']:.2f}",
        "teacher time (s)": f"{sec['teacher']:.2f}",
        "speed-up": f"{_number(report['speedup'], '.1f')}x",
        "cosine mean": f"{_number(cos['mean'])} ({report['mapping']}, {cos['scored']} scored)",
        "cosine": (f"({report['mapping']}, {cos['scored']} scored): mean {_number(cos['mean'])},"
                   f" median {_number(cos['median'])}, min {_number(cos['min'])}"),
        "CKA": _number(report["cka"]),
        "ARI": f"{_number(report['ari'])} (k={report['clusters']})",
        **({"weakest cluster": _weakest(report["weakest_cluster"])} if report.get("weakest_cluster") else {}),
        **({"caveat": f"{report['patches']['student']} patches: CKA, ARI and the cosine from fewer"
                      f" than {SMALL_SAMPLE} patches say little (compare a larger region)"}
           if report["patches"]["student"] < SMALL_SAMPLE else {}),
    }


def _weakest(w: dict[str, Any]) -> str:
    return (f"{w['name']}: mean cosine {_number(w['mean_cosine'])} ({w['scored']} of its {w['patches']}"
            f" patches scored; {w['share']:.0%} of the patches)")


def matched_labels(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Teacher cluster ids (1..K) renamed to the student clusters they overlap most (one to one),
    so the two clusterings can be compared by colour; 0 ("no patch") stays 0."""
    k = int(max(student.max(initial=0), teacher.max(initial=0)))
    overlap = np.zeros((k + 1, k + 1), np.int64)
    np.add.at(overlap, (teacher, student), 1)
    rows, cols = linear_sum_assignment(-overlap[1:, 1:])
    rename = np.arange(k + 1)
    rename[rows + 1] = cols + 1
    return rename[teacher]


def cosine_map(comparison: ComparisonResult | str | os.PathLike[str], features: Any = None) -> SlideMap:
    """Per-patch student-teacher cosine from a comparison folder (or a ComparisonResult) on the
    comparison's own 5x grid; NaN where not scored (the ridge map's training patches).

    ``features`` (a features file or FeatureSet, optional) must be of the comparison's slide.
    """
    result = comparison if isinstance(comparison, ComparisonResult) else read_comparison(comparison)
    smap = patch_map(result, result.cosine, "cosine",
                     "cosine in teacher space, mean per cell; NaN where not scored")
    if features is not None:  # a features file given beside it must be of the same slide
        header = features_header(features)
        theirs = str(header.coords_attrs.get("name") or Path(str(header.attrs.get("slide_path", ""))).stem)
        if theirs and theirs != smap.metadata["slide_name"]:
            raise MapError(
                f"the comparison is of slide {smap.metadata['slide_name']!r}, the features file of {theirs!r}"
            )
    return smap


def patch_map(result: ComparisonResult, values: np.ndarray, label: str, note: str) -> SlideMap:
    """Per-patch ``values`` (N,) of a comparison as a cosine-kind map on its 5x grid, named
    ``label · slide`` (NaN values: no value in the cell)."""
    report = result.report
    slide_mpp = positive_float(report.get("slide_mpp"))
    if slide_mpp is None:
        raise MapError(f"{result.out_dir}: the comparison records no slide µm/px")
    student, teacher = report.get("student", {}), report.get("teacher", {})
    size0 = float(student["patch_size_level0"])
    grid = build_grid(result.coords, size0, size0, slide_mpp)
    rows, cols = grid.cells(result.coords, str(result.out_dir))
    data = rasterize_mean(grid, rows, cols, np.asarray(values, np.float64))
    slide_path = str(report.get("slide") or "")
    size = report.get("slide_dimensions") or [None, None]  # so that the map ends with the slide
    header = FeatureHeader(result.coords, {"slide_path": slide_path, "mpp": student.get("mpp")},
                           {"name": Path(slide_path).stem, "level0_width": size[0], "level0_height": size[1]},
                           None)
    weights_random = any(bool(side.get("weights", {}).get("random")) for side in (student, teacher))
    meta = base_metadata(
        header, grid, "cosine",
        model=f"{student.get('model', '?')} vs {teacher.get('model', '?')}",
        weights_random=weights_random, comparison=str(result.out_dir), mapping=report.get("mapping"),
        values=note,
    )
    return make_map(data, grid, "cosine", map_name(label, meta["slide_name"]), meta)


# ---- files ----------------------------------------------------------------------------------
_ARRAYS = (
    "coords", "crop_coords", "tissue", "student_features", "teacher_features",
    "teacher_crop_features", "cosine", "scored", "student_clusters", "teacher_clusters",
)


#: The files of a comparison folder, in the order they are written (the report last).
_FILES = ((ARRAYS_NAME, ARRAYS_KIND), (RANKING_NAME, RANKING_KIND), (CLUSTERS_NAME, CLUSTERS_KIND),
          (REPORT_NAME, REPORT_KIND))


def check_comparison_folder(out_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder whose ``report.json``, ``compare.h5``,
    ``disagreement.csv`` or ``clusters.csv`` is not one a comparison of ours wrote (unless
    ``overwrite``); other files there are never touched."""
    out = Path(out_dir)
    check_output_folder(out)
    for name, kind in sorted(_FILES, key=lambda item: item[0] != REPORT_NAME):  # the report first
        check_target(out / name, kind, overwrite)


def write_comparison(result: ComparisonResult, *, overwrite: bool = False) -> Path:
    """Write ``compare.h5``, ``disagreement.csv``, ``clusters.csv``, then ``report.json``, each to
    a temporary sibling renamed into place.

    ``report.json`` goes last and is removed first, so a folder with a report has the arrays and
    tables that belong to it.
    """
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
    ranking = ranked_patches(result.cosine, result.scored, result.coords, result.crop_coords,
                             result.student_clusters)
    write_ranking_csv(out / RANKING_NAME, ranking, result.crop_coords.shape[1], overwrite=overwrite)
    clusters = cluster_rows(result.cosine, result.scored, result.student_clusters)
    write_clusters_csv(out / CLUSTERS_NAME, clusters, overwrite=overwrite)
    write_json(out / REPORT_NAME, result.report, REPORT_KIND, overwrite=overwrite)
    return out


def read_comparison(out_dir: str | os.PathLike[str]) -> ComparisonResult:
    """Read a folder written by :func:`compare_slide` back into a :class:`ComparisonResult`."""
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


def features_header(features: Any) -> FeatureHeader:
    if isinstance(features, FeatureSet):
        return FeatureHeader(features.coords, features.attrs, features.coords_attrs, None)
    return read_header(features)
