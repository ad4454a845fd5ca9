"""The offline demo: the sample slide, embedded by the 5x student, and every map and export.

:func:`run_demo` makes the procedural sample slide, embeds its tissue with the XMAG student,
and writes, under one folder::

    xmag-sample-v1.svs                       the sample slide (0.5 µm/px, 20x)
    features[-RANDOM-WEIGHTS]/<slide>.h5     TRIDENT-style coords + features
    maps/<slide>[.RANDOM-WEIGHTS].pca.ome.zarr      PCA map (RGB) as OME-Zarr
    maps/<slide>[.RANDOM-WEIGHTS].kmeans.ome.zarr   k-means labels as OME-Zarr labels
    maps/<slide>[.RANDOM-WEIGHTS].kmeans.geojson    the same labels as QuPath GeoJSON
    maps/<slide>.tissue.ome.zarr             the tissue mask (labels: 1 = tissue)
    compare[-RANDOM-WEIGHTS]/                with ``with_teacher``: a comparison on a small ROI

When the student's real weights are not available (offline, nothing in the hub cache),
random weights are used and said so: in the returned :class:`DemoResult` (``weights_random``,
``notes``), in the file names above and in every file's metadata. No printing here: the
``xmag demo`` command prints :meth:`DemoResult.summary`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._paths import user_cache_dir
from .compare import compare_slide, cosine_map
from .embed import EmbedSettings, embed_slide
from .features import feature_path, is_features_file, read_features
from .maps import kmeans_map, pca_map, tissue_map, write_geojson, write_ome_zarr
from .provenance import RANDOM_WEIGHTS_TAG
from .synthetic import sample_slide_path

__all__ = ["DemoResult", "load_model", "run_demo"]

STUDENT = "xmag"
TEACHER = "uni2-h"
#: Student patches in the default teacher ROI: the teacher costs 16 crops per patch.
TEACHER_ROI_PATCHES = 2


@dataclass
class DemoResult:
    """What the demo wrote and how long it took."""

    out_dir: Path
    slide: Path
    features: Path
    outputs: dict[str, Path]  # name -> file or folder
    model: str
    weights_random: bool
    patches: int
    seconds: float  # the whole demo
    embed_seconds: float
    comparison: Path | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        if self.weights_random:
            lines.append(
                f"!!! RANDOM WEIGHTS: the {self.model} student's real weights are not available;"
                " every map below is made from random features and carries NO meaning"
                f" (file names say {RANDOM_WEIGHTS_TAG}) !!!"
            )
        lines += [f"note: {n}" for n in self.notes]
        rate = self.patches / self.embed_seconds if self.embed_seconds > 0 else float("nan")
        lines.append(
            f"embedded {self.patches} patches at 5x with {self.model}"
            f" ({'random' if self.weights_random else 'real'} weights) in {self.embed_seconds:.1f} s"
            f" ({rate:.1f} patches/s)"
        )
        lines.append(f"sample slide: {self.slide}")
        lines.append(f"features:     {self.features}")
        width = max(len(k) for k in self.outputs) if self.outputs else 0
        for name, path in self.outputs.items():
            lines.append(f"{name:<{width}}  {path}")
        lines.append(f"demo done in {self.seconds:.1f} s -> {self.out_dir}")
        lines.append(f"open it all in napari: xmag demo --napari --out {self.out_dir}")
        return "\n".join(lines)


def default_out_dir() -> Path:
    return user_cache_dir() / "demo"


def load_model(name: str, tiny: bool = False) -> tuple[Any, str | None]:
    """``create_model(name)`` with its real weights, else random ones: (model, why random or None)."""
    from .models import WeightsError, create_model  # torch: only once the demo runs
    from .models.plan import MODELS_ENV, tiny_random_models

    try:
        model = create_model(name, tiny=tiny)
    except WeightsError as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
        return create_model(name, weights="random", tiny=tiny), reason
    return model, f"{MODELS_ENV}=tiny-random asks for tiny random models" if tiny_random_models() else None


def _teacher_roi(coords: np.ndarray, size: float, n: int = TEACHER_ROI_PATCHES) -> tuple[int, int, int, int]:
    """A level-0 box over the first ``n`` tissue patches of the fullest row of the grid."""
    ys, counts = np.unique(coords[:, 1], return_counts=True)
    y = int(ys[np.argmax(counts)])
    xs = np.sort(coords[coords[:, 1] == y, 0])
    xs = xs[len(xs) // 2 - min(n, len(xs)) // 2:][:n]  # from the middle of the row
    x0, x1 = int(xs[0]), int(np.ceil(xs[-1] + size))
    return (x0, y, x1 - x0, int(np.ceil(size)))


def run_demo(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    student: Any = None,
    teacher: Any = None,
    with_teacher: bool = False,
    tiny: bool = False,
    roi: tuple[int, int, int, int] | None = None,
    clusters: int = 8,
    device: str = "auto",
    progress: bool | Callable[[int, int], None] = False,
    cancel: threading.Event | None = None,
) -> DemoResult:
    """Run the demo into ``out_dir`` (default: ``<user cache>/demo``); see the module docstring.

    ``student``/``teacher`` inject models (tests); otherwise the registry's ``xmag`` and
    ``uni2-h`` are built with their real weights, falling back to random ones (``tiny`` builds
    their small test configurations). The teacher runs only with ``with_teacher``, on ``roi``
    (level-0 x, y, w, h) or a box of :data:`TEACHER_ROI_PATCHES` tissue patches.
    """
    start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    slide = sample_slide_path(out)

    if student is None:
        student, why = load_model(STUDENT, tiny=tiny)
        if why:
            notes.append(f"no {STUDENT} weights ({why}); using RANDOM weights")
    random_w = bool(student.weights.random)
    tag = f".{RANDOM_WEIGHTS_TAG}" if random_w else ""
    name = student.spec.name

    features_dir = out / (f"features-{RANDOM_WEIGHTS_TAG}" if random_w else "features")
    settings = EmbedSettings(device=device, workers=2)
    # The demo's own features of other settings are replaced; anything else there is refused.
    ours = is_features_file(feature_path(features_dir, slide))
    embedded = embed_slide(slide, student, features_dir, settings, overwrite=ours, progress=progress,
                           cancel=cancel)
    data = read_features(embedded.output)
    embed_seconds = embedded.seconds if not embedded.skipped else float(data.attrs.get("seconds", 0.0))

    maps_dir = out / "maps"
    stem = slide.stem
    pca = pca_map(data)
    km = kmeans_map(data, clusters)
    outputs: dict[str, Path] = {
        "PCA map (OME-Zarr)": write_ome_zarr(maps_dir / f"{stem}{tag}.pca.ome.zarr", pca),
        "k-means map (OME-Zarr labels)": write_ome_zarr(maps_dir / f"{stem}{tag}.kmeans.ome.zarr", km),
        "k-means map (QuPath GeoJSON)": write_geojson(maps_dir / f"{stem}{tag}.kmeans.geojson", km),
        "tissue mask (OME-Zarr labels)": write_ome_zarr(maps_dir / f"{stem}.tissue.ome.zarr",
                                                        tissue_map(slide)),
    }

    comparison = None
    if with_teacher:
        if teacher is None:
            teacher, why = load_model(TEACHER, tiny=tiny)
            if why:
                notes.append(f"no {TEACHER} weights ({why}); using RANDOM weights for the teacher")
        t_random = bool(teacher.weights.random)
        cmp_tag = f"-{RANDOM_WEIGHTS_TAG}" if (random_w or t_random) else ""
        box = roi or _teacher_roi(data.coords, float(data.coords_attrs["patch_size_level0_exact"]))
        comparison = out / f"compare{cmp_tag}"
        result = compare_slide(slide, student, teacher, comparison, roi=box, clusters=clusters,
                               device=device, progress=progress, cancel=cancel, batch_size=16)
        cos = cosine_map(result)
        outputs["comparison (report.json, compare.h5)"] = comparison
        outputs["cosine map (OME-Zarr)"] = write_ome_zarr(
            maps_dir / f"{stem}{'.' + RANDOM_WEIGHTS_TAG if cmp_tag else ''}.cosine.ome.zarr", cos)
        notes.append(result.summary().replace("\n", "; "))

    return DemoResult(
        out_dir=out, slide=slide, features=embedded.output, outputs=outputs, model=name,
        weights_random=random_w, patches=len(data), seconds=time.perf_counter() - start,
        embed_seconds=embed_seconds, comparison=comparison, notes=notes,
    )
