"""One augmentation, applied identically at both magnifications.

A view is a pair of flips and a mild colour jitter. The same :class:`View` is applied to the
student's 5x image and to the teacher's 20x region *before* the region is cut into crops, so
that crop ``k`` of the flipped region is still the crop at row ``k // n``, column ``k % n`` of
what the student sees. Colour jitter is one affine map of RGB (brightness, contrast about a
fixed grey level, saturation, hue rotation), so the same parameters give the same colours
whichever magnification they are applied to; pixels are clipped once, at the end.

Randomness never comes from a global generator: a view is drawn from a generator seeded by
``(seed, epoch, pair index)``, so the augmentation of a sample does not depend on which
DataLoader worker reads it, on the number of workers, or on where a run was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FLIP_VARIANTS",
    "JITTER",
    "View",
    "apply_view",
    "draw_views",
    "grey_level",
    "view_rng",
]

#: The flip variants of a field of view, in cache order: index = 1 * h + 2 * v.
FLIP_VARIANTS: tuple[str, ...] = ("none", "h", "v", "hv")

#: Mild jitter, as released: factors in [1 - 0.05, 1 + 0.05], hue shift in [-0.05, 0.05] turns.
JITTER = {"brightness": 0.05, "contrast": 0.05, "saturation": 0.05, "hue": 0.05}

# ITU-R 601 luma, the grey of torchvision's rgb_to_grayscale, and the YIQ transform whose
# chroma plane a hue shift rotates.
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class View:
    """Flips and jitter factors of one view; the defaults are the identity."""

    hflip: bool = False
    vflip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # turns: 0.05 = 18 degrees

    @property
    def variant(self) -> int:
        """Index into :data:`FLIP_VARIANTS` (what a teacher cache stores per pair)."""
        return int(self.hflip) + 2 * int(self.vflip)

    @property
    def jittered(self) -> bool:
        return (self.brightness, self.contrast, self.saturation, self.hue) != (1.0, 1.0, 1.0, 0.0)


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's views: a function of the run seed, the epoch and the pair."""
    return np.random.default_rng([seed, epoch, index])


def draw_views(rng: np.random.Generator, count: int, *, flips: bool, jitter: bool) -> list[View]:
    """``count`` independent views; flips are fair coins, jitter factors uniform."""
    views = []
    for _ in range(count):
        h, v = (bool(b) for b in rng.integers(0, 2, size=2)) if flips else (False, False)
        if jitter:
            j = JITTER
            b, c, s = (1.0 + rng.uniform(-j[k], j[k]) for k in ("brightness", "contrast", "saturation"))
            hue = rng.uniform(-j["hue"], j["hue"])
            views.append(View(h, v, b, c, s, hue))
        else:
            views.append(View(h, v))
    return views


def grey_level(image: np.ndarray) -> float:
    """Mean luma of an RGB image: the level contrast jitter pivots on.

    Taken from the teacher's region and used for the student image too, so both are jittered
    by exactly the same map (torchvision pivots on each image's own mean, which would differ
    slightly between the 5x image and each 20x crop).
    """
    # Every 4th pixel each way: a pivot, not a measurement, and 16x cheaper on a 896 px region.
    return float(image[::4, ::4].reshape(-1, 3).mean(axis=0) @ _LUMA)


def _colour_map(view: View, grey: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with jittered = A @ rgb + b, composing brightness, contrast, saturation, hue."""
    eye = np.eye(3)
    a = view.brightness * eye
    b = np.zeros(3)
    # contrast: blend with the (brightness-adjusted) grey level
    c = view.contrast
    a, b = c * a, c * b + (1 - c) * view.brightness * grey
    # saturation: blend with each pixel's own luma
    s = view.saturation
    sat = s * eye + (1 - s) * np.outer(np.ones(3), _LUMA)
    a, b = sat @ a, sat @ b
    # hue: rotate the chroma (I, Q) plane of YIQ
    theta = 2 * math.pi * view.hue
    rot = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
    hue = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
    return hue @ a, hue @ b


def apply_view(image: np.ndarray, view: View, grey: float) -> np.ndarray:
    """``image`` (H, W, 3) uint8 flipped and jittered by ``view``; a new array."""
    out = image
    if view.hflip:
        out = out[:, ::-1]
    if view.vflip:
        out = out[::-1]
    if view.jittered:
        a, b = _colour_map(view, grey)
        flat = out.reshape(-1, 3).astype(np.float32) @ a.T.astype(np.float32) + b.astype(np.float32)
        out = np.clip(np.rint(flat), 0, 255).astype(np.uint8).reshape(out.shape)
    return np.ascontiguousarray(out)
