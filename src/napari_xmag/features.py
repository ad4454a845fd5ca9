"""Feature files: the hand-off point between embedding and everything downstream.

The h5 layout is TRIDENT's: ``coords`` (N, 2) level-0 x, y and ``features`` (N, D)
float32, with the patching attributes on ``coords``. A zarr v3 store holds the same
arrays, plus the patch-token grids when asked for. Writes are atomic: a file exists under
its final name only when complete, so a rerun can trust what it finds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FeatureFileError", "FeatureSet", "feature_path", "read_features", "write_features"]

SUFFIX = {"h5": ".h5", "zarr": ".zarr"}


class FeatureFileError(Exception):
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


def _plain(value: Any) -> Any:
    """Attribute values h5py and zarr both store: numbers, strings, bools; None as ''."""
    if value is None:
        return ""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_features(path: str | os.PathLike[str], data: FeatureSet) -> Path:
    """Write atomically: into a temporary sibling, then rename over ``path``."""
    path = Path(path)
    if len(data.coords) != len(data.features):
        raise ValueError(f"{len(data.coords)} coords but {len(data.features)} feature rows")
    from .writers._atomic import atomic_path  # here: the writers package imports this module

    fmt = "zarr" if path.suffix == ".zarr" else "h5"
    with atomic_path(path) as target:  # also removes what a killed earlier write of path left
        (_write_zarr if fmt == "zarr" else _write_h5)(target, data)
    return path


def _write_h5(path: Path, data: FeatureSet) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        coords = f.create_dataset("coords", data=np.asarray(data.coords, np.int64).reshape(-1, 2))
        features = f.create_dataset("features", data=np.asarray(data.features, np.float32))
        for key, value in data.coords_attrs.items():
            coords.attrs[key] = _plain(value)
        for key, value in data.attrs.items():
            features.attrs[key] = _plain(value)
        if data.tokens is not None:
            f.create_dataset("tokens", data=np.asarray(data.tokens, np.float32), compression="gzip")


def _write_zarr(path: Path, data: FeatureSet) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    coords = root.create_array("coords", data=np.asarray(data.coords, np.int64).reshape(-1, 2))
    root.create_array("features", data=np.asarray(data.features, np.float32))
    coords.attrs.update({k: _plain(v) for k, v in data.coords_attrs.items()})
    root.attrs.update({k: _plain(v) for k, v in data.attrs.items()})
    if data.tokens is not None:
        root.create_array("tokens", data=np.asarray(data.tokens, np.float32))


#: What h5py and zarr raise for a damaged or foreign file: all of it is "not a readable file".
_READ_ERRORS = (OSError, KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError)


def read_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Read an h5 or zarr features file written by us or by TRIDENT.

    Raises :class:`FeatureFileError` naming the file for anything that is not one: a damaged
    file, missing or misshapen ``coords``/``features``, non-numeric or non-finite coordinates.
    """
    path = Path(path)
    if not path.exists():
        raise FeatureFileError(f"{path}: no such features file")
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return _read_zarr(path)
        return _read_h5(path)
    except FeatureFileError:
        raise
    except _READ_ERRORS as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FeatureFileError(f"{path}: not a readable features file ({cause})") from None


def _read_h5(path: Path) -> FeatureSet:
    import h5py

    with h5py.File(path, "r") as f:
        arrays = {}
        for key in ("coords", "features", "tokens"):
            if key not in f:
                if key == "tokens":
                    continue
                raise FeatureFileError(f"{path}: no '{key}' dataset (is it a features file?)")
            if not isinstance(f[key], h5py.Dataset):
                raise FeatureFileError(f"{path}: '{key}' is a {type(f[key]).__name__}, not a dataset")
            arrays[key] = np.asarray(f[key][()])
        return _feature_set(
            path, arrays, _attrs(f["features"].attrs), _attrs(f["coords"].attrs)
        )


def _read_zarr(path: Path) -> FeatureSet:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    arrays = {}
    for key in ("coords", "features", "tokens"):
        if key not in root:
            if key == "tokens":
                continue
            raise FeatureFileError(f"{path}: no '{key}' array (is it a features store?)")
        if not isinstance(root[key], zarr.Array):
            raise FeatureFileError(f"{path}: '{key}' is a group, not an array")
        arrays[key] = np.asarray(root[key][...])
    return _feature_set(path, arrays, dict(root.attrs), dict(root["coords"].attrs))


def _feature_set(
    path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any], coords_attrs: dict[str, Any]
) -> FeatureSet:
    """Check the arrays' kinds and shapes before they become a FeatureSet."""
    coords, features, tokens = arrays["coords"], arrays["features"], arrays.get("tokens")
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise FeatureFileError(f"{path}: '{key}' holds {a.dtype} values, not numbers")
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise FeatureFileError(f"{path}: 'coords' is {coords.shape}, not (N, 2) level-0 x, y")
    if coords.dtype.kind == "f" and not (np.isfinite(coords).all() and (coords == np.round(coords)).all()):
        raise FeatureFileError(f"{path}: 'coords' holds non-integer or non-finite values")
    if features.ndim != 2 or len(features) != len(coords):
        raise FeatureFileError(
            f"{path}: 'features' is {features.shape}, not (N, D) with N = {len(coords)} coords"
        )
    if tokens is not None and (tokens.ndim < 2 or len(tokens) != len(coords)):
        raise FeatureFileError(f"{path}: 'tokens' is {tokens.shape}, not one grid per patch ({len(coords)})")
    return FeatureSet(
        coords=coords.astype(np.int64),
        features=features.astype(np.float32, copy=False),
        attrs=attrs,
        coords_attrs=coords_attrs,
        tokens=tokens,
    )


def _attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def settings_differ(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The run settings that an existing file was made with and that differ from ``wanted``."""
    differ = {}
    for key, value in wanted.items():
        old = existing.get(key)
        if json.dumps(_plain(old)) != json.dumps(_plain(value)):
            differ[key] = (old, value)
    return differ
