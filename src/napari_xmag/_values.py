"""Plain values in metadata: JSON, zarr attributes, h5 attributes and napari layer metadata.

One rule for each direction, so that a value survives every store it goes through:
:func:`json_safe` for JSON and layer metadata, :func:`to_attr` / :func:`from_attrs` for h5 and
zarr attributes, :func:`positive_float` for reading a number that must be one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["from_attrs", "json_safe", "positive_float", "to_attr"]


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and inf as None, other
    objects (paths, dtypes) as their string."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_attr(value: Any) -> Any:
    """A value h5py and zarr both store as an attribute: numbers, strings, bools and lists of
    them; None as ``""``; arrays as lists; anything else as its string."""
    if value is None:
        return ""
    if isinstance(value, np.ndarray):
        return [to_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_attr(v) for v in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """h5 or zarr attributes as plain Python values: bytes decoded, arrays as lists."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, np.ndarray):
            value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value.tolist()]
        elif isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    return out


def positive_float(value: Any) -> float | None:
    """``value`` as a positive finite float, or None (missing, not a number, zero, NaN, a bool)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
