"""Feature files: the hand-off point between embedding and everything downstream.

The h5 layout is TRIDENT's: ``coords`` (N, 2) level-0 x, y and ``features`` (N, D)
float32, with the patching attributes on ``coords``. A zarr v3 store holds the same
arrays, plus the patch-token grids when asked for. Writes are atomic: a file exists under
its final name only when complete, so a rerun can trust what it finds.

A run stopped part-way (cancelled, or failed after some batches) keeps what it did in a
*partial* file beside the output (``<name>.partial``, never mistaken for a features file): the
rows done so far and which they are, keyed by the run's settings, the patch grid and the batch
size, so that a rerun with the same key embeds only the rest and writes the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from ._atomic import OutputKind, atomic_path, read_small_json
from ._paths import InputFileError, file_problem
from ._values import from_attrs, to_attr
from .formats import h5
from .formats import zarr as zarr_store

__all__ = [
    "FEATURES_FORMAT",
    "FEATURES_KIND",
    "PARTIAL_KIND",
    "FeatureFileError",
    "FeatureHeader",
    "FeatureSet",
    "PartialFeatures",
    "feature_path",
    "is_features_file",
    "partial_key",
    "partial_path",
    "read_features",
    "read_header",
    "read_partial",
    "remove_partial",
    "unique_feature_paths",
    "write_features",
    "write_partial",
]

SUFFIX = {"h5": ".h5", "zarr": ".zarr"}
#: The root attribute that marks a features file as ours (older files: ``xmag_version`` on the
#: features array).
FEATURES_FORMAT = "napari-xmag-features"
#: Features hold float32 rows that maps turn into float64 and decompose: a file is read only
#: when three times its features fit the memory budget.
_FEATURES_FACTOR = 3.0


class FeatureFileError(InputFileError):
    """A features file is missing, malformed or does not match what was asked."""


@dataclass
class FeatureSet:
    coords: np.ndarray  # (N, 2) int64 level-0 x, y
    features: np.ndarray  # (N, D) float32
    attrs: dict[str, Any] = field(default_factory=dict)  # run: model, weights, slide, precision
    coords_attrs: dict[str, Any] = field(default_factory=dict)  # patching: sizes, mpp, overlap
    tokens: np.ndarray | None = None  # (N, gh, gw, D) patch-token grids, zarr only

    def __len__(self) -> int:
        return len(self.coords)


def feature_path(out_dir: str | os.PathLike[str], slide: str | os.PathLike[str], fmt: str = "h5") -> Path:
    """Where a slide's features go: ``OUT/<slide stem>.h5`` (or ``.zarr``)."""
    if fmt not in SUFFIX:
        raise ValueError(f"feature format must be one of {sorted(SUFFIX)}, not {fmt!r}")
    return Path(out_dir) / f"{Path(slide).stem}{SUFFIX[fmt]}"


def unique_feature_paths(
    slides: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], fmt: str = "h5"
) -> list[Path]:
    """The output of each slide; a ValueError when two slides would share one (``a/x.svs`` and
    ``b/x.tiff`` are both ``OUT/x.h5``), before anything is read."""
    outputs = [feature_path(out_dir, s, fmt) for s in slides]
    seen: dict[Path, str | os.PathLike[str]] = {}
    for slide, output in zip(slides, outputs, strict=True):
        if output in seen:
            raise ValueError(f"{seen[output]} and {slide} would both be written to {output}; rename one,"
                             " or run them into different --out folders")
        seen[output] = slide
    return outputs


def is_features_file(path: str | os.PathLike[str]) -> bool:
    """True for a features file napari-xmag wrote (h5 or zarr); False, never an error, otherwise."""
    path = Path(path)
    try:
        if path.is_dir():
            attrs = (read_small_json(path / "zarr.json") or {}).get("attributes", {})
            return isinstance(attrs, dict) and (
                attrs.get("format") == FEATURES_FORMAT or "xmag_version" in attrs  # older files of ours
            )
        if file_problem(path) is not None:
            return False

        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FEATURES_FORMAT:
                return True
            features = f.get("features")
            return isinstance(features, h5py.Dataset) and "xmag_version" in features.attrs
    except Exception:  # any file at all: not ours
        return False


#: What ``write_features`` may replace: a features file of ours (the run decides whether its
#: settings allow it).
FEATURES_KIND = OutputKind("features file", is_features_file)


def write_features(path: str | os.PathLike[str], data: FeatureSet, *, overwrite: bool = False) -> Path:
    """Write atomically: into a temporary sibling, then rename over ``path``.

    What is at ``path`` is replaced only when it is a features file of ours, or with ``overwrite``.
    """
    path = Path(path)
    if len(data.coords) != len(data.features):
        raise ValueError(f"{len(data.coords)} coords but {len(data.features)} feature rows")
    fmt = "zarr" if path.suffix == ".zarr" else "h5"
    with atomic_path(path, FEATURES_KIND, overwrite=overwrite) as target:  # also removes stale parts
        (_write_zarr if fmt == "zarr" else _write_h5)(target, data)
    return path


def _write_h5(path: Path, data: FeatureSet) -> None:

    with h5py.File(path, "w") as f:
        f.attrs["format"] = FEATURES_FORMAT
        coords = f.create_dataset("coords", data=np.asarray(data.coords, np.int64).reshape(-1, 2))
        features = f.create_dataset("features", data=np.asarray(data.features, np.float32))
        for key, value in data.coords_attrs.items():
            coords.attrs[key] = to_attr(value)
        for key, value in data.attrs.items():
            features.attrs[key] = to_attr(value)
        if data.tokens is not None:
            f.create_dataset("tokens", data=np.asarray(data.tokens, np.float32), compression="gzip")


def _write_zarr(path: Path, data: FeatureSet) -> None:

    import zarr  # here: reading an h5, or a file's header, needs no zarr (0.4 s to import)

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    coords = root.create_array("coords", data=np.asarray(data.coords, np.int64).reshape(-1, 2))
    root.create_array("features", data=np.asarray(data.features, np.float32))
    coords.attrs.update({k: to_attr(v) for k, v in data.coords_attrs.items()})
    root.attrs.update({**{k: to_attr(v) for k, v in data.attrs.items()}, "format": FEATURES_FORMAT})
    if data.tokens is not None:
        root.create_array("tokens", data=np.asarray(data.tokens, np.float32))


#: What h5py and zarr raise for a damaged or foreign file: all of it is "not a readable file".
_READ_ERRORS = (OSError, KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError)


def read_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Read an h5 or zarr features file written by us or by TRIDENT.

    Raises :class:`FeatureFileError` naming the file for anything that is not one: a damaged
    file, missing or misshapen ``coords``/``features``, non-numeric or non-finite coordinates,
    data kept in other files, or arrays larger than the file holds or memory allows.
    """
    path = Path(path)
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return _read_zarr(path)
        return _read_h5(path)
    except FeatureFileError:
        raise
    except _READ_ERRORS as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FeatureFileError(f"{path}: not a readable features file ({cause})") from None


class FeatureHeader(NamedTuple):
    """A features file without its features: the patches and what the file records."""

    coords: np.ndarray  # (N, 2) int64
    attrs: dict[str, Any]
    coords_attrs: dict[str, Any]
    path: str | None


def read_header(path: str | os.PathLike[str]) -> FeatureHeader:
    """The coords and attributes of a features file, without reading its features."""
    path = Path(path)
    try:
        if path.suffix == ".zarr" or path.is_dir():
            root = _zarr_root(path)
            coords = _zarr_read(root, "coords", path)
            attrs, ca = dict(root.attrs), dict(root["coords"].attrs)
        else:

            with h5.open_h5(path, FeatureFileError, "features file") as f:
                coords = h5.read(f, "coords", path, FeatureFileError)
                h5.dataset(f, "features", path, FeatureFileError, 0.0)
                attrs, ca = from_attrs(f["features"].attrs), from_attrs(f["coords"].attrs)
    except FeatureFileError:
        raise
    except _READ_ERRORS as err:
        raise FeatureFileError(f"{path}: not a readable features file ({err})") from None
    coords = _checked_coords(path, coords)
    return FeatureHeader(coords, attrs, ca, str(path))


def _read_h5(path: Path) -> FeatureSet:

    with h5.open_h5(path, FeatureFileError, "features file") as f:
        arrays = {}
        for key in ("coords", "features", "tokens"):
            if key == "tokens" and key not in f:
                continue
            if key not in f:
                raise FeatureFileError(f"{path}: no '{key}' dataset (is it a features file?)")
            factor = _FEATURES_FACTOR if key == "features" else 1.0
            arrays[key] = h5.read(f, key, path, FeatureFileError, factor)
        return _feature_set(
            path, arrays, from_attrs(f["features"].attrs), from_attrs(f["coords"].attrs)
        )


def _zarr_root(path: Path) -> Any:

    if file_problem(path, folder=True) == "no such file":
        raise FeatureFileError(f"{path}: no such features file")
    return zarr_store.open_group(path, FeatureFileError, "features store")


def _zarr_read(root: Any, key: str, path: Path, factor: float = 1.0) -> np.ndarray:

    return zarr_store.read(root, key, path, FeatureFileError, factor)


def _read_zarr(path: Path) -> FeatureSet:
    root = _zarr_root(path)
    arrays = {}
    for key in ("coords", "features", "tokens"):
        if key == "tokens" and key not in root:
            continue
        if key not in root:
            raise FeatureFileError(f"{path}: no '{key}' array (is it a features store?)")
        arrays[key] = _zarr_read(root, key, path, _FEATURES_FACTOR if key == "features" else 1.0)
    return _feature_set(path, arrays, dict(root.attrs), dict(root["coords"].attrs))


def _checked_coords(path: Path, coords: np.ndarray) -> np.ndarray:
    if coords.dtype.kind not in "biuf":
        raise FeatureFileError(f"{path}: 'coords' holds {coords.dtype} values, not numbers")
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise FeatureFileError(f"{path}: 'coords' is {coords.shape}, not (N, 2) level-0 x, y")
    if coords.dtype.kind == "f" and not (np.isfinite(coords).all() and (coords == np.round(coords)).all()):
        raise FeatureFileError(f"{path}: 'coords' holds non-integer or non-finite values")
    return coords.astype(np.int64)


def _feature_set(
    path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any], coords_attrs: dict[str, Any]
) -> FeatureSet:
    """Check the arrays' kinds and shapes before they become a FeatureSet."""
    features, tokens = arrays["features"], arrays.get("tokens")
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise FeatureFileError(f"{path}: '{key}' holds {a.dtype} values, not numbers")
    coords = _checked_coords(path, arrays["coords"])
    if features.ndim != 2 or len(features) != len(coords):
        raise FeatureFileError(
            f"{path}: 'features' is {features.shape}, not (N, D) with N = {len(coords)} coords"
        )
    if tokens is not None and (tokens.ndim < 2 or len(tokens) != len(coords)):
        raise FeatureFileError(f"{path}: 'tokens' is {tokens.shape}, not one grid per patch ({len(coords)})")
    return FeatureSet(
        coords=coords,
        features=features.astype(np.float32, copy=False),
        attrs=attrs,
        coords_attrs=coords_attrs,
        tokens=tokens,
    )


def settings_differ(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The run settings that an existing file was made with and that differ from ``wanted``."""
    differ = {}
    for key, value in wanted.items():
        old = existing.get(key)
        if json.dumps(to_attr(old)) != json.dumps(to_attr(value)):
            differ[key] = (old, value)
    return differ


# ---- partial runs -----------------------------------------------------------------------------
PARTIAL_FORMAT = "napari-xmag-partial-features"


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where the partial state of ``output`` is kept (``CMU-1.h5`` -> ``CMU-1.h5.partial``)."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def _is_partial(path: Path) -> bool:
    try:
        if file_problem(path) is not None:
            return False
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("format") == PARTIAL_FORMAT)
    except Exception:  # any file at all: not ours
        return False


#: What :func:`write_partial` may replace: a partial file of ours.
PARTIAL_KIND = OutputKind("partial features file", _is_partial)


@dataclass
class PartialFeatures:
    features: np.ndarray  # (N, D) float32, rows where ``done``
    done: np.ndarray  # (N,) bool

    @property
    def count(self) -> int:
        return int(self.done.sum())


def partial_key(settings: Mapping[str, Any], coords: np.ndarray, batch_size: int) -> str:
    """What a partial run is the same run by: its settings, its patches (in grid order) and the
    batch size (the same batches give the same bits)."""
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(coords, "<i8").tobytes())
    h.update(str(int(batch_size)).encode())
    return h.hexdigest()


def write_partial(output: str | os.PathLike[str], key: str, state: PartialFeatures) -> Path | None:
    """Keep ``state`` beside ``output`` (atomically); None when a file that is not ours is there."""
    path = partial_path(output)
    if os.path.lexists(path) and not _is_partial(path):
        return None  # someone else's file under our name: leave it, lose only the resume
    with atomic_path(path, PARTIAL_KIND) as target, h5py.File(target, "w") as f:
        f.attrs["format"] = PARTIAL_FORMAT
        f.attrs["key"] = key
        f.create_dataset("features", data=np.asarray(state.features, np.float32))
        f.create_dataset("done", data=np.asarray(state.done, bool))
    return path


def read_partial(output: str | os.PathLike[str], key: str, rows: int, dim: int | None = None
                 ) -> PartialFeatures | None:
    """The partial state of ``output`` when it is ours, of this run (``key``), ``rows`` long (and
    ``dim`` wide, when given)."""
    path = partial_path(output)
    if not _is_partial(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            shape = f["features"].shape
            if f.attrs.get("key") != key or f["done"].shape != (rows,) or len(shape) != 2 or shape[0] != rows:
                return None
            if dim is not None and shape[1] != dim:
                return None
            features, done = f["features"][...], f["done"][...]
        return PartialFeatures(np.asarray(features, np.float32), np.asarray(done, bool))
    except (OSError, KeyError, ValueError):
        return None


def remove_partial(output: str | os.PathLike[str]) -> None:
    """Remove the partial state of ``output`` once the output is whole (only a file of ours)."""
    path = partial_path(output)
    if _is_partial(path):
        path.unlink(missing_ok=True)
