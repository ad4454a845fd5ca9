"""The map kinds: PCA, k-means, probe, attention, and the tissue mask, from a features file.

Fitting (PCA, k-means, probe predictions) is done once per features file and cached in memory,
keyed by the file's path, modification time and size, so maps re-render in milliseconds.
numpy and scikit-learn only: no napari, Qt or torch.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from .. import __version__
from ..features import FeatureFileError, FeatureHeader, FeatureSet, read_features, read_header
from ..slide import Slide
from ..tiling import tissue_mask
from .grid import MapError, MapGrid, grid_for_features, rasterize_labels, rasterize_mean
from .probes import ProbeFileError, load_probe, predict, probe_classes
from .slide_map import (
    KINDS,
    MAP_FORMAT,
    MAP_FORMAT_VERSION,
    SlideMap,
    base_metadata,
    cluster_names,
    label_colors,
    make_map,
    map_name,
)

__all__ = [
    "KMEANS_MAX_FIT",
    "KMEANS_N_INIT",
    "attention_map",
    "cache_info",
    "clear_cache",
    "kmeans_labels",
    "kmeans_map",
    "make_maps",
    "pca_map",
    "probe_maps",
    "tissue_map",
]

#: The tissue mask's colour: white, so that it is told apart from every cluster colour.
TISSUE_COLOUR = (255, 255, 255)
#: k-means restarts, and the most patches it is fitted on (the rest are assigned to a centre).
KMEANS_N_INIT = 3
KMEANS_MAX_FIT = 10_000


# ---- sources and the cache ------------------------------------------------------------------
class _FileKey(NamedTuple):
    path: str
    mtime_ns: int
    size: int


def _file_key(path: str | os.PathLike[str], what: str = "features file",
              error: type[Exception] = FeatureFileError) -> _FileKey:
    p = Path(path)
    if not p.exists():
        raise error(f"{p}: no such {what}")
    st = p.stat()
    if p.is_dir():  # a zarr store: its newest entry
        mtimes = [st.st_mtime_ns] + [q.stat().st_mtime_ns for q in p.rglob("*")]
        return _FileKey(str(p.resolve()), max(mtimes), 0)
    return _FileKey(str(p.resolve()), st.st_mtime_ns, st.st_size)


Source = str | os.PathLike[str] | FeatureSet


def _fit_pca(features: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """(N, 3) first three principal components, each robust-scaled by its percentiles to [0, 1]."""
    x = np.asarray(features, np.float64)
    n_comp = min(3, x.shape[0], x.shape[1])
    out = np.zeros((len(x), 3))
    if n_comp >= 1 and len(x) >= 2:
        out[:, :n_comp] = PCA(n_components=n_comp, random_state=0).fit_transform(x)
    lo, hi = np.percentile(out, percentiles, axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((out - lo) / width, 0.0, 1.0).astype(np.float32)


def kmeans_labels(features: np.ndarray, k: int = 8, seed: int = 0) -> np.ndarray:
    """(N,) k-means labels **1..K** (0 is kept for "no patch" in label maps): scikit-learn
    KMeans (k-means++, ``n_init`` = :data:`KMEANS_N_INIT`, fixed seed), fitted on at most
    :data:`KMEANS_MAX_FIT` patches (a seeded subsample), then every patch is assigned to its
    nearest centre. K is capped at the number of patches. The one k-means of the package: maps,
    the comparison and its widget all use it."""
    if k < 1:
        raise MapError(f"k-means needs at least 1 cluster, got {k}")
    x = np.asarray(features, np.float64)
    k = min(k, len(x))
    fit = x
    if len(x) > KMEANS_MAX_FIT:
        pick = np.random.default_rng(seed).choice(len(x), KMEANS_MAX_FIT, replace=False)
        fit = x[np.sort(pick)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(fit)
    labels = km.labels_ if fit is x else km.predict(x)
    return (labels + 1).astype(np.int32)


_FITTERS: dict[str, Callable[..., np.ndarray]] = {"pca": _fit_pca, "kmeans": kmeans_labels}


@functools.lru_cache(maxsize=32)
def _fitted(key: _FileKey, kind: str, params: tuple[tuple[str, Any], ...]) -> np.ndarray:
    """Per-patch values of a features file; computed once per (file version, kind, params)."""
    data = read_features(key.path)
    if kind == "probe":
        given = dict(params)
        probe = load_probe(given["probe"], trust_pickle=given["trust_pickle"])
        values = predict(probe, data.features, key.path)
    else:
        values = _FITTERS[kind](data.features, **dict(params))
    values.flags.writeable = False  # shared by every render
    return values


@functools.lru_cache(maxsize=32)
def _header(key: _FileKey) -> FeatureHeader:
    """Coords and attributes of a features file, without reading the features."""
    header = read_header(key.path)
    header.coords.flags.writeable = False
    return FeatureHeader(header.coords, header.attrs, header.coords_attrs, key.path)


def cache_info() -> Any:
    """``functools`` cache statistics of the fits: ``misses`` counts PCA/k-means/probe computations."""
    return _fitted.cache_info()


def clear_cache() -> None:
    _fitted.cache_clear()
    _header.cache_clear()


def _source_header(source: Source) -> FeatureHeader:
    if isinstance(source, FeatureSet):
        return FeatureHeader(source.coords, source.attrs, source.coords_attrs, None)
    return _header(_file_key(source))


def _patch_values(source: Source, kind: str, **params: Any) -> np.ndarray:
    """Per-patch values of ``kind``: cached for a features file, computed for a FeatureSet."""
    if isinstance(source, FeatureSet):
        if kind == "probe":
            return predict(params["probe"], source.features, "features")
        return _FITTERS[kind](source.features, **params)
    return _fitted(_file_key(source), kind, tuple(sorted(params.items())))


# ---- the map kinds --------------------------------------------------------------------------
def _header_grid(source: Source, slide_mpp: float | None) -> tuple[FeatureHeader, MapGrid]:
    header = _source_header(source)
    what = header.path or "features"
    empty = np.empty((len(header.coords), 0), np.float32)
    fs = FeatureSet(header.coords, empty, header.attrs, header.coords_attrs)
    return header, grid_for_features(fs, slide_mpp, what)


def _name(meta: dict[str, Any], label: str) -> str:
    return map_name(label, meta["slide_name"])


def pca_map(
    source: Source,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    dtype: str = "float32",
    slide_mpp: float | None = None,
) -> SlideMap:
    """The first three principal components as RGB (H, W, 3): each component robust-scaled to
    [0, 1] by its ``percentiles`` over the patches, then averaged per cell. ``dtype="uint8"``
    gives 0-255 with 0 where no patch; float32 has NaN there."""
    if dtype not in ("float32", "uint8"):
        raise MapError(f"a PCA map is float32 or uint8, not {dtype!r}")
    header, grid = _header_grid(source, slide_mpp)
    values = _patch_values(source, "pca", percentiles=tuple(float(p) for p in percentiles))
    rows, cols = grid.cells(header.coords)
    rgb = np.moveaxis(rasterize_mean(grid, rows, cols, values), 0, -1)
    if dtype == "uint8":
        rgb = np.where(np.isfinite(rgb), np.rint(np.nan_to_num(rgb) * 255), 0).astype(np.uint8)
    meta = base_metadata(header, grid, "pca", percentiles=list(percentiles), classes=["PC1", "PC2", "PC3"],
                          colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                          values="first 3 principal components, robust-scaled to [0, 1], mean per cell")
    return make_map(np.ascontiguousarray(rgb), grid, "pca", _name(meta, "PCA"), meta)


def kmeans_map(source: Source, k: int = 8, *, seed: int = 0, slide_mpp: float | None = None) -> SlideMap:
    """k-means clusters of the patch features as labels 1..K (0 = no patch); majority per cell."""
    header, grid = _header_grid(source, slide_mpp)
    labels = _patch_values(source, "kmeans", k=int(k), seed=int(seed))
    rows, cols = grid.cells(header.coords)
    data = rasterize_labels(grid, rows, cols, labels)
    n = int(labels.max(initial=0))
    meta = base_metadata(header, grid, "kmeans", clusters=n, clusters_requested=int(k), seed=int(seed),
                          classes=cluster_names(n), colors=label_colors(n),
                          values="k-means cluster, majority of the covering patches")
    return make_map(data, grid, "kmeans", _name(meta, f"k-means (k={n})"), meta)


def probe_maps(
    source: Source, probe: Any, *, slide_mpp: float | None = None, trust_pickle: bool = False
) -> tuple[SlideMap, SlideMap]:
    """Class probabilities (C, H, W) averaged per cell (they sum to 1 in every covered cell),
    and the segmentation: the argmax class of each cell as label class_index + 1 (0 = no patch).

    ``probe`` is any object with ``predict_proba`` (scikit-learn classifier or pipeline,
    :class:`LinearProbe`) or a probe file (:func:`load_probe`; ``trust_pickle`` as there).
    """
    header, grid = _header_grid(source, slide_mpp)
    if isinstance(probe, (str, os.PathLike)):
        probe_obj = load_probe(probe, trust_pickle=trust_pickle)
        probe_src = str(probe)
        if isinstance(source, FeatureSet):
            prob = predict(probe_obj, source.features, "features")
        else:  # cached per (features file, probe file) versions
            key = _file_key(probe, "probe file", ProbeFileError)
            prob = _patch_values(source, "probe", probe=key.path, probe_mtime=key.mtime_ns,
                                 trust_pickle=trust_pickle)
    else:  # an in-memory object may be refitted in place: never cached
        probe_obj, probe_src = probe, type(probe).__name__
        features = source.features if isinstance(source, FeatureSet) else read_features(source).features
        prob = predict(probe_obj, features, str(header.path or "features"))
    rows, cols = grid.cells(header.coords)
    heat = rasterize_mean(grid, rows, cols, prob)
    classes = probe_classes(probe_obj, prob.shape[1])
    covered = np.isfinite(heat).all(axis=0)
    seg = np.where(covered, np.argmax(np.nan_to_num(heat, nan=-1.0), axis=0) + 1, 0)
    seg = seg.astype(np.uint8 if len(classes) < 256 else np.uint16)
    colors = label_colors(len(classes))
    common = {"probe": probe_src, "classes": classes, "colors": colors}
    meta_p = base_metadata(header, grid, "probe", **common, values="class probability, mean per cell")
    meta_s = base_metadata(header, grid, "probe-labels", **common,
                            values="argmax of the mean class probabilities, label = class index + 1")
    return (
        make_map(heat, grid, "probe", _name(meta_p, "probe"), meta_p),
        make_map(seg, grid, "probe-labels", _name(meta_s, "probe classes"), meta_s),
    )


def attention_map(
    source: Source,
    coords: np.ndarray,
    values: np.ndarray,
    *,
    slide_mpp: float | None = None,
    name: str = "attention",
    note: str = "",
) -> SlideMap:
    """Per-patch values (e.g. ABMIL attention, or its percentile ranks) at ``coords`` (level-0
    top-left x, y, on the features file's grid), averaged per cell; NaN where no patch."""
    header, grid = _header_grid(source, slide_mpp)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    values = np.asarray(values, np.float64).reshape(-1)
    if len(coords) != len(values):
        raise MapError(f"{len(coords)} coords but {len(values)} attention values")
    rows, cols = grid.cells(coords, "attention")
    data = rasterize_mean(grid, rows, cols, values)
    meta = base_metadata(header, grid, "attention", values=note or "per-patch value, mean per cell",
                          attention_patches=len(coords))
    return make_map(data, grid, "attention", _name(meta, name), meta)


def make_maps(
    source: Source | None,
    kind: str,
    *,
    clusters: int = 8,
    seed: int = 0,
    probe: Any = None,
    attention: tuple[np.ndarray, np.ndarray] | None = None,
    slide_mpp: float | None = None,
    trust_pickle: bool = False,
) -> list[SlideMap]:
    """The maps of one kind of a features file (probe gives the probabilities and the
    segmentation); cosine maps come from a comparison (:func:`napari_xmag.compare.cosine_map`)."""
    if kind not in KINDS:
        raise MapError(f"map kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "cosine":  # the comparison's own kind: napari_xmag.compare is above maps
        raise MapError("a cosine map is made from a comparison folder: napari_xmag.compare.cosine_map"
                       " (xmag maps --kind cosine --comparison DIR)")
    if source is None:
        raise MapError(f"a {kind} map needs a features file")
    if kind == "pca":
        return [pca_map(source, slide_mpp=slide_mpp)]
    if kind == "kmeans":
        return [kmeans_map(source, clusters, seed=seed, slide_mpp=slide_mpp)]
    if kind == "probe":
        if probe is None:
            raise MapError("a probe map needs a probe (an object with predict_proba or a probe file)")
        return list(probe_maps(source, probe, slide_mpp=slide_mpp, trust_pickle=trust_pickle))
    if attention is None:
        raise MapError("an attention map needs per-patch (coords, values)")
    coords, values = attention
    return [attention_map(source, coords, values, slide_mpp=slide_mpp)]




def tissue_map(slide_path: str | os.PathLike[str], mpp_override: float | None = None) -> SlideMap:
    """The slide's tissue mask as a label map (1 = tissue): the one tissue layer of the demo and
    the inference widget. Mask pixel ``i`` covers level-0 ``[i * ds, (i + 1) * ds)``."""
    slide_path = Path(slide_path)
    with Slide(slide_path, mpp=mpp_override) as slide:
        slide_mpp = slide.require_mpp("a tissue mask cannot be placed on it")
        mask = tissue_mask(slide)
    rows, cols = mask.shape
    ds = float(mask.downsample)
    grid = MapGrid(x0=0.0, y0=0.0, step_x=ds, step_y=ds, patch_x=ds, patch_y=ds, rows=rows, cols=cols,
                   slide_mpp=slide_mpp)
    meta = {
        "format": MAP_FORMAT, "format_version": MAP_FORMAT_VERSION, "kind": "labels",
        "slide_path": str(slide_path), "slide_name": slide_path.stem, "slide_mpp": slide_mpp,
        "classes": ["tissue"], "colors": [list(TISSUE_COLOUR)], "grid": grid.to_dict(),
        "values": f"tissue mask at {mask.mpp:g} µm/px (1 = tissue)", "weights_random": False,
        "tissue_fraction": mask.tissue_fraction, "xmag_version": __version__,
    }
    return SlideMap(mask.mask.astype(np.uint8), grid.scale, grid.translate, "labels",
                    map_name("tissue", slide_path.stem), meta, grid)
