"""A GeoJSON written by QuPath's rules (File > Export objects as GeoJSON, QuPath 0.4+): a
FeatureCollection of Polygon / MultiPolygon features in level-0 pixels, ``properties.objectType``
"annotation", ``properties.classification`` with a name and an RGB colour, no napari-xmag member.
Written by hand over a features file's patches, so that each class holds known patches."""

from __future__ import annotations

import json

import numpy as np

RED, BLUE = [200, 0, 0], [0, 90, 200]


def _box(x0: float, y0: float, x1: float, y1: float) -> list[list[list[float]]]:
    """A closed GeoJSON ring, counter-clockwise in image coordinates, as QuPath writes."""
    return [[[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]]]


def qupath_geojson(path, data) -> dict:
    """Two classes over CMU-1's 5x patches: "Tumor" (one Polygon) on the left column's patch
    centres, "Stroma" (a MultiPolygon of two parts) on the right column's; and a Point, which
    QuPath exports too and a probe cannot use."""
    size = data.coords_attrs["patch_size_level0_exact"]
    centres = data.coords + size / 2
    xs = np.unique(data.coords[:, 0])
    left, right = centres[data.coords[:, 0] == xs[0]], centres[data.coords[:, 0] == xs[-1]]
    pad = 40.0  # level-0 px around the centres: well inside the patches, clear of the next column's

    def around(points: np.ndarray) -> list[list[list[float]]]:
        (x0, y0), (x1, y1) = points.min(0) - pad, points.max(0) + pad
        return _box(x0, y0, x1, y1)

    tumour = around(left)
    mid = np.median(right[:, 1])
    stroma = [around(right[right[:, 1] <= mid]), around(right[right[:, 1] > mid])]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": "5f6c1c1e-0000-4000-8000-000000000001",
             "geometry": {"type": "Polygon", "coordinates": tumour},
             "properties": {"objectType": "annotation", "isLocked": False,
                            "classification": {"name": "Tumor", "color": RED}}},
            {"type": "Feature", "id": "5f6c1c1e-0000-4000-8000-000000000002",
             "geometry": {"type": "MultiPolygon", "coordinates": stroma},
             "properties": {"objectType": "annotation",
                            "classification": {"name": "Stroma", "color": BLUE}}},
            {"type": "Feature", "id": "5f6c1c1e-0000-4000-8000-000000000003",
             "geometry": {"type": "Point", "coordinates": [1000.0, 1000.0]},
             "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": RED}}},
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    return {"tumour": np.array(tumour[0]), "stroma": [np.array(s[0]) for s in stroma],
            "n_tumour": len(left), "n_stroma": len(right)}
