"""napari sample data: the procedural tissue slide, made once and cached (a thin shim)."""

from __future__ import annotations

from typing import Any

from ._reader import slide_layer_data
from .synthetic import sample_slide_path


def make_sample_slide() -> list[tuple[Any, dict[str, Any], str]]:
    return [slide_layer_data(str(sample_slide_path()))]
