"""Live maps while a slide embeds: what the canvas shows before the features file exists.

:func:`embed_slide_live` runs :func:`~napari_xmag.embed.embed_slide_steps` (the batches nearest
``near`` first, e.g. the centre of the current view) and yields a :class:`LiveUpdate` at the
start (the patch grid, nothing embedded yet), then at most every ``every`` seconds, and once at
the end. An update holds two maps on the final map's own grid:

- ``progress``: labels, 1 = a tissue patch still waiting, 2 = embedded (the "done" mask);
- ``pca``: a *cheap* PCA: the projection and its robust colour range are fitted once on the
  first embedded patches (:data:`FIT_PATCHES`; on a small slide a quarter of its patches, at
  least :data:`MIN_FIT_PATCHES`) and then only applied
  to each new batch, so the colours of what is already drawn never change while the run goes
  on. ``None`` until enough patches are in.

The end is the ordinary run's: the features file (bit-equal to a run without live maps) and
:func:`~napari_xmag.maps.pca_map` on it, the PCA refined over every patch. No napari here:
the inference widget turns the maps into layers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embed import EmbedSettings, EmbedStep, SlideEmbedding, embed_slide_steps
from .features import FeatureHeader
from .maps import MapGrid, SlideMap, grid_for_features, rasterize_labels, rasterize_mean
from .maps.slide_map import base_metadata, make_map, map_name

__all__ = ["FIT_PATCHES", "MIN_FIT_PATCHES", "LivePCA", "LiveUpdate", "embed_slide_live", "live_updates"]

#: Patches the live PCA is fitted on (a small slide: a quarter of them, at least MIN_FIT_PATCHES).
FIT_PATCHES = 64
MIN_FIT_PATCHES = 16
WAITING, EMBEDDED = 1, 2


@dataclass(frozen=True, eq=False)
class LiveUpdate:
    """One picture of a run in progress (see the module docstring)."""

    done: int
    total: int
    seconds: float  # since the run started
    progress: SlideMap
    pca: SlideMap | None
    final: bool = False  # the last update: every patch is in (the file is being written)


class LivePCA:
    """A PCA fitted once on the first ``fit_patches`` rows, then applied to new rows only."""

    def __init__(self, fit_patches: int = FIT_PATCHES,
                 percentiles: tuple[float, float] = (1.0, 99.0)) -> None:
        self.fit_patches = fit_patches
        self.percentiles = percentiles
        self._mean: np.ndarray | None = None
        self._axes: np.ndarray | None = None
        self._lo = self._width = np.zeros(3)
        self._values: np.ndarray | None = None  # (N, 3), NaN where not projected yet

    @property
    def fitted(self) -> bool:
        return self._axes is not None

    def update(self, features: np.ndarray, done: np.ndarray) -> np.ndarray | None:
        """(N, 3) colours in [0, 1] of the rows done (NaN elsewhere), or None before the fit."""
        n = len(done)
        if self._values is None:
            self._values = np.full((n, 3), np.nan)
        if not self.fitted:
            if done.sum() < min(self.fit_patches, max(MIN_FIT_PATCHES, n // 4), n):
                return None
            self._fit(features[np.flatnonzero(done)[: self.fit_patches]])  # bounded, even after a resume
        new = done & np.isnan(self._values[:, 0])
        if new.any():
            self._values[new] = self._project(features[new])
        return self._values

    def _fit(self, x: np.ndarray) -> None:
        x = np.nan_to_num(np.asarray(x, np.float64))  # a preview must never stop the run
        self._mean = x.mean(axis=0)
        # the first three right singular vectors: sklearn's PCA, without its per-call set-up
        _, _, vt = np.linalg.svd(x - self._mean, full_matrices=False)
        axes = np.zeros((3, x.shape[1]))
        axes[: min(3, len(vt))] = vt[:3]
        self._axes = axes
        scores = (x - self._mean) @ axes.T
        lo, hi = np.percentile(scores, self.percentiles, axis=0)
        self._lo, self._width = lo, np.where(hi > lo, hi - lo, 1.0)

    def _project(self, x: np.ndarray) -> np.ndarray:
        assert self._mean is not None and self._axes is not None
        scores = (np.nan_to_num(np.asarray(x, np.float64)) - self._mean) @ self._axes.T
        return np.clip((scores - self._lo) / self._width, 0.0, 1.0)


def live_updates(
    steps: Generator[EmbedStep, None, SlideEmbedding], *, every: float = 0.25,
    fit_patches: int = FIT_PATCHES, clock: Callable[[], float] = time.monotonic,
) -> Generator[LiveUpdate, None, SlideEmbedding]:
    """The steps of a run as live maps: the first at once, then at most one per ``every``
    seconds, and the last (all patches in) always. Returns the run's :class:`SlideEmbedding`."""
    pca = LivePCA(fit_patches)
    grid: MapGrid | None = None
    header: FeatureHeader | None = None
    shown = -np.inf
    runs = []

    def run() -> Generator[EmbedStep, None, None]:
        runs.append((yield from steps))

    for step in run():
        if grid is None or header is None:
            header = FeatureHeader(step.coords, step.run_attrs, step.coords_attrs, str(step.output))
            grid = grid_for_features(header, what=str(step.slide))
        last = step.count == step.total  # the last step of a run that ends well
        if last or clock() - shown >= every:
            yield _update(step, grid, header, pca, final=last)
            shown = clock()
    return runs[0]  # type: ignore[no-any-return]


def _update(step: EmbedStep, grid: MapGrid, header: FeatureHeader, pca: LivePCA, final: bool) -> LiveUpdate:
    rows, cols = grid.cells(step.coords)
    slide_name = str(step.coords_attrs.get("name") or step.slide.stem)
    state = np.where(step.done, EMBEDDED, WAITING)
    meta = base_metadata(header, grid, "labels", classes=["waiting", "embedded"],
                         colors=[[128, 128, 128], [0, 200, 120]], live=True,
                         values=f"{step.count} of {step.total} patches embedded")
    progress = make_map(rasterize_labels(grid, rows, cols, state), grid, "labels",
                        map_name("embedding progress", slide_name), meta)
    colours = pca.update(step.features, step.done) if step.features is not None else None
    pca_map = None
    if colours is not None:
        rgb = np.moveaxis(rasterize_mean(grid, rows, cols, colours), 0, -1)
        # uint8 (0 where no patch, as pca_map(dtype="uint8")): a quarter of float32 to redraw
        rgb = np.where(np.isfinite(rgb), np.rint(np.nan_to_num(rgb) * 255), 0).astype(np.uint8)
        meta = base_metadata(header, grid, "pca", classes=["PC1", "PC2", "PC3"], live=True,
                             colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255]], fitted_on=pca.fit_patches,
                             values="first 3 principal components of the first patches embedded,"
                             " robust-scaled to [0, 1]; refined over all patches at the end")
        pca_map = make_map(np.ascontiguousarray(rgb), grid, "pca", map_name("PCA (live)", slide_name), meta)
    return LiveUpdate(step.count, step.total, step.seconds, progress, pca_map, final)


def embed_slide_live(
    slide_path: str | os.PathLike[str],
    model: Any,
    out_dir: str | os.PathLike[str],
    settings: EmbedSettings | None = None,
    *,
    near: tuple[float, float] | None = None,
    every: float = 0.25,
    fmt: str = "h5",
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    cancel: threading.Event | None = None,
) -> Generator[LiveUpdate, None, SlideEmbedding]:
    """:func:`~napari_xmag.embed.embed_slide` with live maps (see the module docstring); a
    finished file yields nothing and is returned as skipped."""
    steps = embed_slide_steps(slide_path, model, out_dir, settings, fmt=fmt, overwrite=overwrite,
                              progress=progress, cancel=cancel, near=near)
    return (yield from live_updates(steps, every=every))
