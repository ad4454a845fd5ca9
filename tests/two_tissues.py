"""The sample slide's two tissue types (stroma, tumour) and labels painted on its patches."""

from __future__ import annotations

import numpy as np

WIDTH, HEIGHT, MPP = 2048, 1536, 0.5
PATCH = 224  # level-0 px (the sample slide is 20x, patches cut at 20x)
STROMA, TUMOUR = 1, 2


def chosen(truth: np.ndarray, n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(truth == c), n, replace=False) for c in (STROMA, TUMOUR)]
    return np.concatenate(picks)


def centres_um(data, index) -> np.ndarray:
    """World (y, x) µm of the patch centres: level-0 pixel x is centred at x * mpp."""
    xy = data.coords[index] + PATCH / 2 - 0.5
    return xy[:, ::-1] * MPP


def painted(data, truth, index, pixel_um: float = 16.0) -> tuple[np.ndarray, tuple, tuple]:
    """A labels raster (``pixel_um`` px, pixel 0 centred at world 0) with a 3x3 dab on each patch centre."""
    raster = np.zeros((int(HEIGHT * MPP / pixel_um) + 1, int(WIDTH * MPP / pixel_um) + 1), np.uint8)
    for (y, x), cls in zip(centres_um(data, index), truth[index], strict=True):
        i, j = round(y / pixel_um), round(x / pixel_um)
        raster[i - 1:i + 2, j - 1:j + 2] = cls
    return raster, (pixel_um, pixel_um), (0.0, 0.0)
