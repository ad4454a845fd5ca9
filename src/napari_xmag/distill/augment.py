"""One augmentation, applied identically at both magnifications.

A view is a pair of flips and a mild colour jitter. The same :class:`View` is applied to the
student's 5x image and to the teacher's 20x region *before* the region is cut into crops, so
that crop ``k`` of the flipped region is still the crop at row ``k // n``, column ``k % n`` of
what the student sees. Colour jitter is one affine map of RGB (brightness, contrast about a
fixed grey level, saturation, hue rotation), so the same parameters give the same colours
whichever magnification they are applied to; pixels are clipped once, at the end.

Two jitter styles (``JITTER_STYLES``): ``"shared"`` (ours, above: one map for both images) and
``"torchvision"`` (the released trainer's: ``torchvision.transforms.functional``'s
``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue`` in that order on
each PIL image separately, rounding to uint8 after each; contrast pivots on each image's own grey
mean, hue turns in HSV). ``jitter_p`` is the chance a view is jittered at all (released: 0.5).

Stain augmentation (``stain_sigma`` > 0, Tellez et al. 2018, "HED jitter"): each pixel's
haematoxylin, eosin and DAB optical densities (Ruifrok's matrix, as scikit-image's) are
scaled by ``1 + a`` and shifted by ``b``, with ``a`` and ``b`` uniform in ``[-sigma, sigma]``
per channel and view; a per-pixel map, so it too is the same at both magnifications. It is part
of a view's colour augmentation: drawn with the same chance, applied before the jitter.

Randomness never comes from a global generator: a view is drawn from a generator seeded by
``(seed, epoch, pair index)``, so the augmentation of a sample does not depend on which
DataLoader worker reads it, on the number of workers, or on where a run was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "FLIP_VARIANTS",
    "JITTER",
    "JITTER_STYLES",
    "View",
    "apply_view",
    "draw_views",
    "grey_level",
    "view_rng",
]

#: The flip variants of a field of view, in cache order: index = 1 * h + 2 * v.
FLIP_VARIANTS: tuple[str, ...] = ("none", "h", "v", "hv")

#: How jitter parameters are applied (see the module docstring).
JITTER_STYLES = ("shared", "torchvision")

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
    hed: tuple[float, ...] = ()  # stain augmentation: scales (3) then shifts (3) of H, E, D densities

    @property
    def variant(self) -> int:
        """Index into :data:`FLIP_VARIANTS` (what a teacher cache stores per pair)."""
        return int(self.hflip) + 2 * int(self.vflip)

    @property
    def colour_jittered(self) -> bool:
        return (self.brightness, self.contrast, self.saturation, self.hue) != (1.0, 1.0, 1.0, 0.0)

    @property
    def jittered(self) -> bool:
        """Any colour change (jitter or stain): what a teacher cache cannot hold."""
        return self.colour_jittered or bool(self.hed)


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's views: a function of the run seed, the epoch and the pair."""
    return np.random.default_rng([seed, epoch, index])


def draw_views(
    rng: np.random.Generator, count: int, *, flips: bool, jitter: bool, jitter_p: float = 1.0,
    stain_sigma: float = 0.0,
) -> list[View]:
    """``count`` independent views; flips are fair coins, colour augmentation (jitter, stain) has
    chance ``jitter_p``, its parameters uniform."""
    views = []
    coloured = jitter or stain_sigma > 0
    for _ in range(count):
        h, v = (bool(b) for b in rng.integers(0, 2, size=2)) if flips else (False, False)
        # no coin at p = 1: such runs draw the very views they drew before p existed
        coin = rng.random() < jitter_p if coloured and jitter_p < 1 else coloured
        view = View(h, v)
        if coin and jitter:
            j = JITTER
            b, c, s = (1.0 + rng.uniform(-j[k], j[k]) for k in ("brightness", "contrast", "saturation"))
            hue = rng.uniform(-j["hue"], j["hue"])
            view = View(h, v, b, c, s, hue)
        if coin and stain_sigma > 0:
            view = replace(view, hed=tuple(float(x) for x in rng.uniform(-stain_sigma, stain_sigma, 6)))
        views.append(view)
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


def apply_view(image: np.ndarray, view: View, grey: float, style: str = "shared") -> np.ndarray:
    """``image`` (H, W, 3) uint8 flipped and jittered by ``view``; a new array.

    ``grey`` is the contrast pivot of the ``"shared"`` style; ``"torchvision"`` takes each
    image's own, as torchvision does.
    """
    out = image
    if view.hflip:
        out = out[:, ::-1]
    if view.vflip:
        out = out[::-1]
    if view.hed:
        out = _hed_jitter(out, view.hed)
    if view.colour_jittered and style == "torchvision":
        return _torchvision_jitter(np.ascontiguousarray(out), view)
    if view.colour_jittered:
        a, b = _colour_map(view, grey)
        flat = out.reshape(-1, 3).astype(np.float32) @ a.T.astype(np.float32) + b.astype(np.float32)
        out = np.clip(np.rint(flat), 0, 255).astype(np.uint8).reshape(out.shape)
    return np.ascontiguousarray(out)


def _torchvision_jitter(image: np.ndarray, view: View) -> np.ndarray:
    """The released trainer's jitter, by the same functions on a PIL image."""
    import torchvision.transforms.functional as tf  # torch's image library; only this style needs it
    from PIL import Image

    pil = Image.fromarray(image)
    pil = tf.adjust_brightness(pil, view.brightness)
    pil = tf.adjust_contrast(pil, view.contrast)
    pil = tf.adjust_saturation(pil, view.saturation)
    pil = tf.adjust_hue(pil, view.hue)
    return np.asarray(pil).copy()


def _hed_jitter(image: np.ndarray, hed: tuple[float, ...]) -> np.ndarray:
    """Stain densities scaled by ``1 + hed[:3]`` and shifted by ``hed[3:]`` (Tellez et al.).

    Densities by Ruifrok's matrix (scikit-image's ``hed_from_rgb``), without the clipping of
    ``rgb2hed``, so that zero strength gives the image back (up to rounding).
    """
    from skimage.color import hed_from_rgb, rgb_from_hed  # scikit-image: a dependency

    od = -np.log((image.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    densities = od @ hed_from_rgb.astype(np.float32)
    densities = densities * (1.0 + np.asarray(hed[:3], np.float32)) + np.asarray(hed[3:], np.float32)
    rgb = 256.0 * np.exp(-(densities @ rgb_from_hed.astype(np.float32))) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(image.shape)
