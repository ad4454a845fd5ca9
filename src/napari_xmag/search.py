"""Find similar tissue: a query region's embeddings -> cosine similarity over slides.

A :class:`Query` is made from a slide's features and a region of it (:func:`query_from_region`):
a point picks the patch under it, a rectangle the patches whose centres lie inside it. In mode
``"mean"`` the query is one vector (the mean of the region's unit embeddings, made unit again);
in mode ``"prototypes"`` every patch is a prototype and a patch's score is its best cosine to
any of them. A query records the model that made it (:data:`IDENTITY_KEYS` of the features
attributes), is saved as JSON (``QUERY.json``) and refuses features of another model.

* :func:`similarity_map`: the cosine of every patch of one slide as a map aligned to it.
* :func:`search_folder`: the top-k patches over every features file of a folder (an
  ``xmag embed`` or ``xmag batch`` output). Each file's unit-normalised float32 embeddings are
  cached once as ``.npy`` files (keyed by path, size and modification time, written atomically)
  and memory-mapped, so a repeated query reads no h5. Exact brute force by default; past
  :data:`INDEX_MIN_VALUES` an approximate faiss IVF index (the ``search`` extra) proposes
  candidates that are then scored exactly, so a listed score is always the true cosine.

numpy only (faiss imported when an index is used): no napari, Qt or torch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._atomic import OutputKind, atomic_path, json_kind, read_small_json, write_json
from ._memory import too_big
from ._paths import InputFileError, user_cache_dir
from ._values import from_attrs, positive_float
from .features import FeatureFileError, FeatureSet, feature_path, read_features, settings_differ
from .formats import h5
from .formats import zarr as zarr_store
from .maps import MapError, SlideMap, grid_for_features, rasterize_mean
from .maps.slide_map import base_metadata, make_map, map_name
from .provenance import same_weights_keys

__all__ = [
    "CSV_COLUMNS",
    "HITS_CSV_KIND",
    "IDENTITY_KEYS",
    "INDEX_MIN_VALUES",
    "MODES",
    "QUERY_FORMAT",
    "QUERY_KIND",
    "Hit",
    "Query",
    "SearchCancelled",
    "SearchError",
    "SearchResult",
    "check_model",
    "default_csv_name",
    "features_files",
    "patch_similarity",
    "query_from_region",
    "search_folder",
    "similarity_map",
    "slide_features",
    "slide_hits",
    "write_hits_csv",
]

MODES = ("mean", "prototypes")
QUERY_FORMAT = "napari-xmag-query"
QUERY_FORMAT_VERSION = 1
QUERY_KIND = json_kind("search query", QUERY_FORMAT)
#: The features attributes that say which model made the embeddings
#: (:func:`napari_xmag.provenance.model_identity`); a query and a file must agree on each they both record.
IDENTITY_KEYS = ("model", "tiny", "overrides", "embed_dim", "weights_source", "weights_sha256",
                 "weights_tensors_sha256", "weights_random")
#: A rectangle's patches each become a prototype: past this many the query costs as much as a
#: small folder per slide searched; use mode "mean" or a smaller region.
MAX_PROTOTYPES = 256
#: A saved query is at most MAX_PROTOTYPES vectors: a bigger file is not one of ours.
QUERY_MAX_BYTES = 32 << 20
#: Past this many values (patches x dims) searched, ``index="auto"`` uses the faiss index when it
#: is installed. Exact search reads every value once per query (about 0.25 s per 1e9 values
#: warm here, more when they no longer fit the page cache); the index answers in about a
#: millisecond but costs about 1 s per 1e8 values to build once (benchmarks/bench_search.py).
INDEX_MIN_VALUES = 1_000_000_000
CSV_COLUMNS = ("rank", "slide", "x", "y", "score", "features", "slide_path")
CACHE_FORMAT = "napari-xmag-search-cache"
CACHE_VERSION = 1
_CHUNK = 65_536  # rows per block read from a features file or scored
_INSTALL_INDEX = "pip install 'napari-xmag[search]' (faiss-cpu)"


class SearchError(InputFileError):
    """A query or a search cannot be made as asked; the message names the file and the cause."""


class SearchCancelled(Exception):
    """The search saw its cancel event set; what it cached so far is kept (each entry is whole)."""


# ---- the query ------------------------------------------------------------------------------
def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32); non-finite values count as 0, a zero row stays 0."""
    rows = np.nan_to_num(np.asarray(rows, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def _identity(attrs: Mapping[str, Any], dim: int) -> dict[str, Any]:
    who = {k: attrs[k] for k in IDENTITY_KEYS if k in attrs}
    return {**who, "dim": int(dim)}


def _given(value: Any) -> bool:
    return value is not None and value != ""


def check_model(model: Mapping[str, Any], attrs: Mapping[str, Any], dim: int, path: str) -> None:
    """Refuse features of another model than ``model`` (a query's identity) with a
    :class:`SearchError` naming ``path``. Keys that only one side records are not compared
    (TRIDENT files record no model); the same weight tensors are the same model whatever file
    they were loaded from, as for a rerun of ``xmag embed``."""
    if int(model.get("dim", dim)) != int(dim):
        raise SearchError(f"{path}: features of {dim} dimensions, but the query's have {model['dim']}:"
                          " made by another model; search features of the query's model")
    given = {k: model[k] for k in IDENTITY_KEYS if _given(model.get(k)) and _given(attrs.get(k))}
    keys = same_weights_keys(given, attrs)
    differ = settings_differ({k: attrs[k] for k in keys}, keys)
    if differ:
        key, (theirs, ours) = next(iter(differ.items()))
        raise SearchError(f"{path}: made by another model than the query ({key} {_short(theirs)}, the"
                          f" query's {_short(ours)}); search features of the query's model, or make the"
                          " query from them")


def _short(value: Any) -> str:
    """A value for a one-line message: hashes cut to 12 characters."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:13]}…'"


@dataclass(frozen=True, eq=False)
class Query:
    """Unit query vectors (M, D) float32, how they score (``mode``), the model that made them,
    and where they come from (``source``: features file, slide, region, patch coords)."""

    vectors: np.ndarray
    mode: str
    model: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def name(self) -> str:
        """``slide (x, y)``: what a layer or a file of this query is called."""
        region = self.source.get("region") or [0, 0]
        return f"{self.source.get('slide') or 'query'} ({int(region[0])}, {int(region[1])})"

    def scores(self, unit_rows: np.ndarray) -> np.ndarray:
        """The cosine of unit rows (N, D) to the query: the best over its vectors."""
        sims = np.asarray(unit_rows, np.float32) @ self.vectors.T
        return sims.max(axis=1) if sims.shape[1] > 1 else sims[:, 0]

    def to_dict(self) -> dict[str, Any]:
        return {"format": QUERY_FORMAT, "format_version": QUERY_FORMAT_VERSION, "xmag_version": __version__,
                "mode": self.mode, "model": dict(self.model), "source": dict(self.source),
                "vectors": self.vectors.astype(np.float32).tolist()}

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``QUERY.json`` atomically; a file there that is not a query of ours is refused
        unless ``overwrite``."""
        return write_json(path, self.to_dict(), QUERY_KIND, overwrite=overwrite, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Query:
        """A query saved by :meth:`save`; :class:`SearchError` naming the file otherwise."""
        path = Path(path)
        if not path.is_file():
            raise SearchError(f"{path}: no such query file")
        data = read_small_json(path, limit=QUERY_MAX_BYTES)  # 256 prototypes x 4096 floats fit easily
        if not isinstance(data, dict) or data.get("format") != QUERY_FORMAT:
            raise SearchError(f"{path}: not a napari-xmag query (a QUERY.json from xmag search --save-query)")
        try:
            vectors = np.asarray(data["vectors"], np.float32)
            mode, model, source = str(data["mode"]), dict(data["model"]), dict(data.get("source") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise SearchError(f"{path}: a damaged query file ({type(err).__name__}: {err})") from None
        if vectors.ndim != 2 or not len(vectors) or not np.isfinite(vectors).all() or mode not in MODES:
            raise SearchError(f"{path}: a damaged query file (vectors {vectors.shape}, mode {mode!r})")
        if len(vectors) > MAX_PROTOTYPES or int(model.get("dim") or vectors.shape[1]) != vectors.shape[1]:
            raise SearchError(f"{path}: a damaged query file ({len(vectors)} vectors of {vectors.shape[1]}"
                              f" values; at most {MAX_PROTOTYPES}, of the model's width)")
        return cls(_unit(vectors), mode, model, source)


def _features(features: str | os.PathLike[str] | FeatureSet) -> tuple[FeatureSet, str]:
    if isinstance(features, FeatureSet):
        return features, str(features.attrs.get("features_path") or "features")
    return read_features(features), str(features)


def _slide_name(attrs: Mapping[str, Any], coords_attrs: Mapping[str, Any], path: str) -> str:
    """As the maps name a slide: the coords' ``name``, else the slide's stem, else the file's."""
    slide_path = str(attrs.get("slide_path") or "")
    return str(coords_attrs.get("name") or (Path(slide_path).stem if slide_path else "") or Path(path).stem)


def _slide_mpp(data: FeatureSet, slide_mpp: float | None, what: str) -> float:
    given = (slide_mpp, data.attrs.get("slide_mpp"), data.coords_attrs.get("slide_mpp"))
    mpp = next(filter(None, map(positive_float, given)), None)
    if mpp is None:
        raise SearchError(f"{what}: records no slide µm/px (slide_mpp), so a size in µm cannot be"
                          " placed on it; give the region in level-0 px")
    return mpp


def slide_features(slide: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """The features file of ``slide``: itself when it is one, else ``FOLDER/<slide stem>.h5``
    (or ``.zarr``), as ``xmag embed --out FOLDER`` names it."""
    slide = Path(slide)
    if slide.suffix in (".h5", ".zarr"):
        if not slide.exists():
            raise SearchError(f"{slide}: no such features file")
        return slide
    for fmt in ("h5", "zarr"):
        candidate = feature_path(folder, slide, fmt)
        if candidate.exists():
            return candidate
    raise SearchError(f"{slide}: no features of it in {folder} (looked for {slide.stem}.h5 and"
                      f" {slide.stem}.zarr); embed it first: xmag embed {slide} --out {folder}")


def default_csv_name(query: Query) -> str:
    """``search-<slide>-<x>-<y>.csv``, (x, y) the centre of the query's region (level-0 px)."""
    x, y, w, h = (list(query.source.get("region") or []) + [0.0] * 4)[:4]
    slide = re.sub(r"[^A-Za-z0-9._-]+", "_", str(query.source.get("slide") or "query")).strip("._") or "query"
    return f"search-{slide}-{round(x + w / 2)}-{round(y + h / 2)}.csv"


def _patch_size(data: FeatureSet, slide_mpp: float | None, what: str) -> float:
    """A patch's side in level-0 px."""
    for key in ("patch_size_level0_exact", "patch_size_level0"):
        with contextlib.suppress(TypeError, ValueError):
            if float(data.coords_attrs.get(key) or 0) > 0:
                return float(data.coords_attrs[key])
    try:
        return grid_for_features(data, slide_mpp, what).patch_x
    except MapError as err:
        raise SearchError(str(err)) from None


def query_from_region(
    features: str | os.PathLike[str] | FeatureSet, x: float, y: float, width: float | None = None,
    height: float | None = None, *, size_um: float | None = None, mode: str = "mean",
    slide_mpp: float | None = None,
) -> Query:
    """The query of a region of a slide, in its level-0 px.

    Without ``width``/``height``: the patch under the point (x, y) (where patches overlap, the one
    whose centre is nearest). With them: the patches whose centres lie in the rectangle
    ``[x, x + width) x [y, y + height)``, or the patch under its centre when none does.
    ``size_um``: instead, a square of that side in µm centred on (x, y) (``xmag search --size``).
    """
    if mode not in MODES:
        raise SearchError(f"query mode {mode!r}: one of {', '.join(MODES)}")
    data, what = _features(features)
    if not len(data):
        raise SearchError(f"{what}: holds no patches")
    size = _patch_size(data, slide_mpp, what)
    if size_um is not None:
        if not size_um > 0:
            raise SearchError(f"a query region of {size_um:g} µm: the side must be > 0")
        side = float(size_um) / _slide_mpp(data, slide_mpp, what)
        x, y, width, height = x - side / 2, y - side / 2, side, side
    coords = data.coords.astype(np.float64)
    centres = coords + size / 2
    if width is None and height is None:
        width = height = 0.0
    w, h = float(width or 0.0), float(height or 0.0)
    if w < 0 or h < 0:
        raise SearchError(f"a query rectangle of {w:g} x {h:g} px: width and height must be >= 0")
    inside = np.flatnonzero((centres[:, 0] >= x) & (centres[:, 0] < x + w)
                            & (centres[:, 1] >= y) & (centres[:, 1] < y + h))
    if not len(inside):  # a point, or a rectangle smaller than a patch: the patch under its centre
        cx, cy = x + w / 2, y + h / 2
        under = np.flatnonzero((coords[:, 0] <= cx) & (cx < coords[:, 0] + size)
                               & (coords[:, 1] <= cy) & (cy < coords[:, 1] + size))
        if not len(under):
            near = int(np.argmin(np.hypot(centres[:, 0] - cx, centres[:, 1] - cy)))
            nx, ny = (int(v) for v in data.coords[near])
            raise SearchError(f"{what}: no patch under level-0 ({cx:.0f}, {cy:.0f}); the nearest patch is"
                              f" at ({nx}, {ny}), {size:.0f} px wide: pick a point on embedded tissue")
        dist = np.hypot(centres[under, 0] - cx, centres[under, 1] - cy)
        inside = under[[int(np.argmin(dist))]]
    if mode == "prototypes" and len(inside) > MAX_PROTOTYPES:
        raise SearchError(f"{what}: the region holds {len(inside)} patches, more prototypes than"
                          f" {MAX_PROTOTYPES}: choose a smaller region, or mode 'mean'")
    unit = _unit(data.features[inside])
    vectors = unit if mode == "prototypes" else _unit(unit.mean(axis=0, keepdims=True))
    source = {
        "features": "" if what == "features" else what,
        "slide_path": str(data.attrs.get("slide_path") or ""),
        "slide": _slide_name(data.attrs, data.coords_attrs, what),
        "region": [float(x), float(y), w, h],
        "coords": data.coords[inside].tolist(),
        "index": inside.tolist(),
    }
    return Query(vectors, mode, _identity(data.attrs, data.features.shape[1]), source)


# ---- one slide ------------------------------------------------------------------------------
def patch_similarity(features: str | os.PathLike[str] | FeatureSet, query: Query) -> np.ndarray:
    """The cosine similarity (N,) float32 of every patch of a slide to the query; features of
    another model are refused."""
    return _scores(*_features(features), query)


def _scores(data: FeatureSet, what: str, query: Query) -> np.ndarray:
    check_model(query.model, data.attrs, data.features.shape[1], what)
    return query.scores(_unit(data.features)).astype(np.float32)


def slide_hits(features: str | os.PathLike[str] | FeatureSet, query: Query, top: int = 10) -> list[Hit]:
    """The ``top`` patches of one slide most like the query, best first (no cache: one file)."""
    data, what = _features(features)
    scores = _scores(data, what, query)
    order = np.lexsort((np.arange(len(scores)), -scores))[: max(0, int(top))]
    slide = _slide_name(data.attrs, data.coords_attrs, what)
    size = next(filter(None, map(positive_float, (data.coords_attrs.get("patch_size_level0_exact"),
                                                   data.coords_attrs.get("patch_size_level0")))), 0.0)
    return [Hit(slide, int(data.coords[i, 0]), int(data.coords[i, 1]), float(scores[i]),
                "" if what == "features" else what, str(data.attrs.get("slide_path") or ""), size)
            for i in order]


def similarity_map(
    features: str | os.PathLike[str] | FeatureSet, query: Query, *, slide_mpp: float | None = None
) -> SlideMap:
    """The query's cosine similarity as a map aligned to the slide (kind ``cosine``: NaN where no
    patch, the mean of the covering patches per cell, drawn between the lowest and highest)."""
    data, what = _features(features)
    scores = _scores(data, what, query)
    try:
        grid = grid_for_features(data, slide_mpp, what)
        rows, cols = grid.cells(data.coords, what)
    except MapError as err:
        raise SearchError(str(err)) from None
    values = rasterize_mean(grid, rows, cols, scores)
    finite = values[np.isfinite(values)]
    header = _header_of(data, what)
    meta = base_metadata(
        header, grid, "cosine", units="cosine", values=f"cosine similarity to the query ({_how(query)}),"
        " mean per cell", contrast_limits=[float(finite.min()), float(finite.max())] if finite.size else
        [-1.0, 1.0], query={k: query.source.get(k) for k in ("slide", "slide_path", "features", "region")},
        query_mode=query.mode, query_vectors=len(query.vectors), best=float(scores.max()),
    )
    return make_map(values, grid, "cosine", map_name("similarity", meta["slide_name"]), meta)


def _header_of(data: FeatureSet, what: str) -> Any:
    from .features import FeatureHeader

    path = None if what == "features" else what
    return FeatureHeader(data.coords, data.attrs, data.coords_attrs, path)


def _how(query: Query) -> str:
    if query.mode == "mean":
        return f"the mean of {len(query.source.get('coords') or [1])} patches"
    return f"the best of {len(query.vectors)} prototypes"


# ---- a folder: files and their cache ---------------------------------------------------------
def features_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``.h5`` files and ``.zarr`` stores in ``folder`` (an ``xmag embed`` / ``xmag batch``
    output), sorted by name; a features file itself is a folder of one."""
    folder = Path(folder)
    if not folder.exists():
        raise SearchError(f"{folder}: no such folder of features files")
    if folder.suffix in (".h5", ".zarr") and (folder.is_file() or folder.suffix == ".zarr"):
        return [folder]
    if not folder.is_dir():
        raise SearchError(f"{folder}: not a folder of features files (.h5 / .zarr)")
    found = sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                   and ((p.suffix == ".h5" and p.is_file()) or (p.suffix == ".zarr" and p.is_dir())))
    if not found:
        raise SearchError(f"{folder}: holds no features files (.h5 / .zarr from xmag embed or xmag batch)")
    return found


def _file_key(path: Path) -> str:
    """What a cached copy is of: the file's resolved path, size and newest modification."""
    st = path.stat()
    if path.is_dir():  # a zarr store: its newest entry
        mtime, size = max([st.st_mtime_ns, *(q.stat().st_mtime_ns for q in path.rglob("*"))]), 0
    else:
        mtime, size = st.st_mtime_ns, st.st_size
    return f"{path.resolve()}|{size}|{mtime}|v{CACHE_VERSION}"


def _is_cache_entry(path: Path) -> bool:
    data = read_small_json(path / "meta.json")
    return (path.is_dir() and not path.is_symlink() and isinstance(data, dict)
            and data.get("format") == CACHE_FORMAT)


CACHE_KIND = OutputKind("search cache", _is_cache_entry)


def default_cache_dir(folder: str | os.PathLike[str]) -> Path:
    """``<user cache>/search/<folder hash>``: one cache per features folder (``XMAG_CACHE_DIR``)."""
    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / "search" / digest


def _open_features(path: Path) -> tuple[Any, Any, dict[str, Any], dict[str, Any], contextlib.ExitStack]:
    """The coords and features arrays of a file, unread (sliced in blocks), and its attributes."""
    stack = contextlib.ExitStack()
    try:
        if path.suffix == ".zarr" or path.is_dir():
            root = zarr_store.open_group(path, FeatureFileError, "features store")
            coords = zarr_store.array(root, "coords", path, FeatureFileError)
            feats = zarr_store.array(root, "features", path, FeatureFileError, 0.0)
            attrs, ca = dict(root.attrs), dict(root["coords"].attrs)
        else:
            f = stack.enter_context(h5.open_h5(path, FeatureFileError, "features file"))
            coords = h5.dataset(f, "coords", path, FeatureFileError)
            feats = h5.dataset(f, "features", path, FeatureFileError, 0.0)  # read in blocks, not whole
            attrs, ca = from_attrs(feats.attrs), from_attrs(coords.attrs)
    except BaseException:
        stack.close()
        raise
    if len(feats.shape) != 2 or len(coords.shape) != 2 or coords.shape[0] != feats.shape[0]:
        stack.close()
        raise FeatureFileError(f"{path}: 'features' is {tuple(feats.shape)} and 'coords'"
                               f" {tuple(coords.shape)}, not (N, D) and (N, 2)")
    return coords, feats, attrs, ca, stack


def _describe(path: Path, key: str) -> dict[str, Any]:
    """What the pack records of a file: its key, rows, width, model, slide (attributes only)."""
    _, feats, attrs, ca, stack = _open_features(path)
    with stack:
        n, dim = (int(v) for v in feats.shape)
    size = next(filter(None, map(positive_float, (ca.get("patch_size_level0_exact"),
                                                   ca.get("patch_size_level0")))), 0.0)
    return {"path": str(path), "key": key, "rows": n, "dim": dim, "identity": _identity(attrs, dim),
            "slide": _slide_name(attrs, ca, str(path)), "slide_path": str(attrs.get("slide_path") or ""),
            "patch": size}


def _copy_rows(path: Path, vectors: np.ndarray, coords: np.ndarray) -> None:
    """A file's unit float32 vectors and int64 coords into the pack's rows, block by block."""
    xy, feats, _, _, stack = _open_features(path)
    with stack:
        for start in range(0, len(vectors), _CHUNK):
            vectors[start:start + _CHUNK] = _unit(np.asarray(feats[start:start + _CHUNK]))
        block = np.asarray(xy[...])
    if block.dtype.kind not in "biuf" or not np.isfinite(block).all():
        raise FeatureFileError(f"{path}: 'coords' holds non-finite or non-numeric values")
    coords[:] = block.astype(np.int64)


@dataclass(frozen=True)
class _Pack:
    """A folder's patches, cached: unit vectors (N, D) and coords (N, 2) in one contiguous
    memory-mapped .npy each, and per file (in order) its rows and what it records."""

    folder: Path  # the cache entry
    meta: dict[str, Any]

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.meta["files"])

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum([0, *(f["rows"] for f in self.meta["files"])])

    def vectors(self) -> np.ndarray:
        return np.load(self.folder / "vectors.npy", mmap_mode="r")

    def coords(self) -> np.ndarray:
        return np.load(self.folder / "coords.npy", mmap_mode="r")


def _pack_name(keys: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:20] + ".pack"


def _packs_of(cache: Path, folder: str) -> list[_Pack]:
    """The packs this folder left in ``cache`` (another folder may share it)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in cache.iterdir():
            meta = read_small_json(entry / "meta.json") if entry.name.endswith(".pack") else None
            if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT and meta.get("folder") == folder:
                found.append(_Pack(entry, meta))
    return found


def _build_pack(target: Path, files: Sequence[Path], described: Sequence[dict[str, Any]], folder: str,
                old: Sequence[_Pack], progress: Any, cancel: Any) -> int:
    """Write the pack of ``files`` into ``target``: rows of unchanged files copied from an older
    pack of the folder, the others read from their files. Returns how many files were read."""
    total = sum(d["rows"] for d in described)
    dims = {d["dim"] for d in described}
    if len(dims) > 1:
        raise SearchError(f"{folder}: holds features of several widths ({sorted(dims)}): made by different"
                          " models; keep one model's features per folder")
    target.mkdir()
    vectors = np.lib.format.open_memmap(target / "vectors.npy", mode="w+", dtype=np.float32,
                                        shape=(total, dims.pop() if dims else 0))
    coords = np.lib.format.open_memmap(target / "coords.npy", mode="w+", dtype=np.int64, shape=(total, 2))
    earlier = {f["key"]: (p, int(o)) for p in old for f, o in zip(p.files, p.offsets, strict=False)}
    read, start = 0, 0
    for i, (path, d) in enumerate(zip(files, described, strict=True)):
        if cancel is not None and cancel.is_set():
            raise SearchCancelled(f"search cancelled after caching {i} of {len(files)} files")
        end = start + d["rows"]
        if d["key"] in earlier:
            pack, at = earlier[d["key"]]
            vectors[start:end] = pack.vectors()[at:at + d["rows"]]
            coords[start:end] = pack.coords()[at:at + d["rows"]]
        else:
            _copy_rows(path, vectors[start:end], coords[start:end])
            read += 1
        start = end
        if progress is not None:
            progress(i + 1, len(files))
    vectors.flush()
    coords.flush()
    del vectors, coords
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "folder": folder, "files": list(described)}
    (target / "meta.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
    return read


def _prune(cache: Path, keep: set[str], folder: str) -> None:
    """Remove this folder's packs and indexes other than ``keep`` (ours only)."""
    with contextlib.suppress(OSError):
        for entry in cache.iterdir():
            if entry.name in keep or not entry.name.endswith((".pack", ".index")):
                continue
            meta = read_small_json(entry / "meta.json") or {}
            if meta.get("folder") == folder and _is_cache_entry(entry):
                shutil.rmtree(entry, ignore_errors=True)


# ---- a folder: the search -------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One patch found: its slide, level-0 top-left (x, y), cosine to the query, and files."""

    slide: str
    x: int
    y: int
    score: float
    features: str
    slide_path: str = ""
    size: float = 0.0  # the patch's side, level-0 px


@dataclass(frozen=True)
class SearchResult:
    """The top hits, best first, and what the search went through."""

    hits: list[Hit]
    files: int
    patches: int
    method: str  # "exact", or "faiss IVF index (lists, probed), rescored exactly"
    seconds: float
    cache_dir: Path
    read: int = 0  # features files read into the cache by this search

    def table(self) -> str:
        """The hits as a text table: rank, slide, x, y, score."""
        width = max([5, *(len(h.slide) for h in self.hits)])
        lines = [f"{'rank':>4}  {'slide':<{width}}  {'x':>8}  {'y':>8}  {'score':>7}"]
        lines += [f"{i:>4}  {h.slide:<{width}}  {h.x:>8}  {h.y:>8}  {h.score:>7.4f}"
                  for i, h in enumerate(self.hits, start=1)]
        return "\n".join(lines)

    def summary(self) -> str:
        read = f", {self.read} files read into the cache" if self.read else ""
        return (f"{len(self.hits)} hits from {self.patches} patches in {self.files} files ({self.method},"
                f" {self.seconds:.3f} s{read})")


def search_folder(
    folder: str | os.PathLike[str], query: Query, top: int = 10, *,
    cache_dir: str | os.PathLike[str] | None = None, index: str = "auto", progress: Any = None,
    cancel: Any = None,
) -> SearchResult:
    """The ``top`` patches most like ``query`` over every features file of ``folder``.

    Every file is checked (readable, made by the query's model) before anything slow; then the
    folder's cache (``cache_dir``, default :func:`default_cache_dir`) is brought up to date,
    reading only new or changed files, and scored. ``index``: ``"auto"`` (the faiss index past
    :data:`INDEX_MIN_VALUES`, when installed), ``"exact"`` or ``"faiss"``. ``progress(done,
    total)`` is called per file cached; a set ``cancel`` event stops between files.
    """
    start = time.perf_counter()
    if index not in ("auto", "exact", "faiss"):
        raise SearchError(f"index {index!r}: one of auto, exact, faiss")
    if int(top) < 1:
        raise SearchError(f"top {top}: at least 1")
    if index == "faiss" and _faiss() is None:
        raise SearchError(f"the search index needs faiss: {_INSTALL_INDEX}; or search exactly"
                          " (index 'exact')")
    files = features_files(folder)
    where = str(Path(folder).resolve())
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(folder)
    keys = [_file_key(p) for p in files]
    name = _pack_name(keys)
    old = _packs_of(cache, where)
    known = {f["key"]: f for p in old for f in p.files}
    described = []
    for path, key in zip(files, keys, strict=True):  # cheap: attributes only, before anything is read
        d = {**known[key], "path": str(path)} if key in known else _describe(path, key)
        check_model(query.model, d["identity"], int(d["dim"]), str(path))
        described.append(d)
    pack = next((p for p in old if p.folder.name == name), None)
    read = 0
    if pack is None:
        with atomic_path(cache / name, CACHE_KIND) as target:
            read = _build_pack(target, files, described, where, old, progress, cancel)
        pack = _Pack(cache / name, read_small_json(cache / name / "meta.json"))
    values = int(pack.offsets[-1]) * query.dim
    # an IVF-flat index holds every vector in RAM while it is built: only where that fits the
    # budget (exact search streams the memory-mapped pack and needs none of it)
    held = too_big(4.2 * values)
    if index == "faiss" and held:
        raise SearchError(f"{where}: cannot build the faiss index: {held}; search with index='exact'")
    use_index = index == "faiss" or (index == "auto" and values >= INDEX_MIN_VALUES and _faiss() is not None
                                     and held is None)
    _prune(cache, {name, name.replace(".pack", ".index")}, where)
    if use_index:
        hits, method = _index_search(pack, query, int(top))
    else:
        hits, method = _exact_search(pack, query, int(top)), "exact"
    return SearchResult(hits, len(files), int(pack.offsets[-1]), method, time.perf_counter() - start, cache,
                        read)


def _hits(pack: _Pack, rows: np.ndarray, scores: np.ndarray, top: int) -> list[Hit]:
    """The best ``top`` of these rows, highest score first (ties: the earlier row)."""
    order = np.lexsort((rows, -scores))[:top]
    files, offsets, coords = pack.files, pack.offsets, pack.coords()
    which = np.searchsorted(offsets, rows[order], side="right") - 1
    out = []
    for row, n, score in zip(rows[order], which, scores[order], strict=True):
        f = files[int(n)]
        x, y = (int(v) for v in coords[int(row)])
        out.append(Hit(str(f["slide"]), x, y, float(score), str(f["path"]), str(f.get("slide_path") or ""),
                       float(f.get("patch") or 0.0)))
    return out


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores (and any tied with the k-th), in no order."""
    if len(scores) <= k:
        return np.arange(len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return np.flatnonzero(scores >= scores[part].min())


def _exact_search(pack: _Pack, query: Query, top: int) -> list[Hit]:
    """Every patch scored: one matrix product per block of the contiguous cache."""
    vectors = pack.vectors()
    rows, scores = [], []
    for start in range(0, len(vectors), _CHUNK):
        block = query.scores(vectors[start:start + _CHUNK])
        best = _best(block, top)
        rows.append(best + start)
        scores.append(block[best])
    if not rows:
        return []
    return _hits(pack, np.concatenate(rows), np.concatenate(scores), top)


def _faiss() -> Any:
    try:
        import faiss  # optional (the search extra): only for the index
    except ImportError:
        return None
    return faiss


def _index_search(pack: _Pack, query: Query, top: int) -> tuple[list[Hit], str]:
    """Candidates from the faiss IVF index of the pack (built once, kept beside it), then scored
    exactly from the cached vectors: a listed score is always the true cosine."""
    ivf, nlist = _index(pack, _faiss())
    ivf.nprobe = nprobe = min(nlist, max(16, nlist // 16))
    total = int(pack.offsets[-1])
    _, ids = ivf.search(np.ascontiguousarray(query.vectors, np.float32), min(total, max(4 * top, 64)))
    rows = np.unique(ids[ids >= 0])
    scores = query.scores(np.asarray(pack.vectors()[rows]))
    method = f"faiss IVF index ({nlist} lists, {nprobe} probed), rescored exactly"
    return _hits(pack, rows, scores, top), method


def _index(pack: _Pack, faiss: Any) -> tuple[Any, int]:
    """The IVF-flat inner-product index (unit vectors: cosine) of the pack, from the cache or
    built and kept there atomically."""
    where = pack.folder.with_name(pack.folder.name.replace(".pack", ".index"))
    meta = read_small_json(where / "meta.json")
    if isinstance(meta, dict) and meta.get("pack") == pack.folder.name:
        # memory-mapped: a query reads the lists it probes, not the whole index
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        return faiss.read_index(str(where / "ivf.faiss"), flags), int(meta["nlist"])
    vectors = pack.vectors()
    total, dim = vectors.shape
    # sqrt(N) lists, each probed list ~sqrt(N) rows: ~1 s per 1e8 values to build here, where
    # 4 sqrt(N) lists took 8x longer for no better recall (benchmarks/bench_search.py)
    nlist = max(1, min(65_536, int(math.sqrt(total)), total // 39))
    sample_n = min(total, max(39 * nlist, 10_000))
    sample = vectors[np.sort(np.random.default_rng(0).choice(total, sample_n, replace=False))]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(np.ascontiguousarray(sample, np.float32))
    for s in range(0, total, _CHUNK):
        ivf.add(np.ascontiguousarray(vectors[s:s + _CHUNK], np.float32))
    with atomic_path(where, CACHE_KIND) as target:
        target.mkdir()
        faiss.write_index(ivf, str(target / "ivf.faiss"))
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "folder": pack.meta["folder"],
                "pack": pack.folder.name, "nlist": nlist}
        (target / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return ivf, nlist


# ---- the CSV --------------------------------------------------------------------------------
def _is_hits_csv(path: Path) -> bool:
    """True for a CSV this module wrote: its header row is exactly :data:`CSV_COLUMNS`."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with path.open(encoding="utf-8") as fh:
            return fh.readline(4096).strip() == ",".join(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


HITS_CSV_KIND = OutputKind("search results CSV", _is_hits_csv)


def write_hits_csv(path: str | os.PathLike[str], hits: Sequence[Hit], *, overwrite: bool = False) -> Path:
    """Write the hits (rank, slide, x, y, score, features, slide_path) atomically; a file there
    that is not such a CSV of ours is refused unless ``overwrite``."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, h in enumerate(hits, start=1):
        writer.writerow([i, h.slide, h.x, h.y, f"{h.score:.6f}", h.features, h.slide_path])
    with atomic_path(path, HITS_CSV_KIND, overwrite=overwrite) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
    return path
