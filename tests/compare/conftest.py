"""Fixtures of the comparison tests: tiny student and teacher, and the whole of CMU-1 compared."""

from __future__ import annotations

import pytest

from cases import CMU1
from comparisons import KW
from napari_xmag.compare import (
    compare_slide,
)
from napari_xmag.models import create_model


@pytest.fixture(scope="module")
def student():
    return create_model("xmag", weights="random", tiny=True)


@pytest.fixture(scope="module")
def teacher():
    return create_model("uni2-h", weights="random", tiny=True)


@pytest.fixture(scope="module")
def whole(student, teacher, tmp_path_factory):
    """The whole of CMU-1 (4 patches, 64 crops), with the progress calls it made."""
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("whole")
    kw = {**KW, "progress": lambda d, t: calls.append((d, t))}
    result = compare_slide(CMU1.path, student, teacher, out, **kw)
    return result, calls
