"""Stain normalisation: a slide's colours brought to a reference's before its patches are embedded.

Two methods, each fitted **once per slide** on its tissue pixels (the thumbnail's, so the fit
costs one coarse read) and then applied to every patch as it is read:

* ``macenko`` (Macenko et al., ISBI 2009): the slide's haematoxylin and eosin optical-density
  vectors and concentration range from its tissue; each patch's pixels are re-expressed with the
  reference's vectors and range;
* ``reinhard`` (Reinhard et al., 2001): the tissue's mean and spread in CIE L*a*b* matched to the
  reference's.

The reference is an image of the user's (``reference=PATH``: its tissue pixels are fitted the
same way) or the bundled default: Macenko's standard H&E matrix and ranges (the values of the
original implementation and of torchstain), and for Reinhard the L*a*b* statistics of the
tissue of CMU-1-Small-Region (tests/data), measured with this module.

Implemented here with numpy and scikit-image (already dependencies) rather than torchstain: the
latter fits the *source* again on every image, where a slide needs one fit for all its patches;
the arithmetic is the published one, checked in the tests against the definitions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STAIN_METHODS", "StainError", "StainNormalizer", "fit_stain_normalizer", "tissue_pixels"]

STAIN_METHODS = ("none", "macenko", "reinhard")
_IO = 240.0  # transmitted light intensity (Macenko's Io)
_BETA = 0.15  # OD below this is background (Macenko's beta)
_ALPHA = 1.0  # percentile of the angles taken as the stain extremes
#: Macenko's reference H&E OD matrix (columns H, E) and 99th-percentile concentrations.
MACENKO_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_MAX_C = np.array([1.9705, 1.0308])
#: L*a*b* mean and standard deviation of CMU-1-Small-Region's tissue (this module's fit).
REINHARD_LAB = (np.array([43.50, 29.09, -13.52]), np.array([16.08, 10.95, 6.92]))


class StainError(ValueError):
    """A stain normalisation that cannot be fitted (no tissue, an unreadable reference)."""


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 pixels of ``rgb`` that hold stain: optical density above Macenko's beta in
    every channel (glass and pale background left out)."""
    px = np.asarray(rgb, np.uint8).reshape(-1, rgb.shape[-1])[:, :3]
    od = _od(px)
    return px[(od > _BETA).all(axis=1)]


def _od(px: np.ndarray) -> np.ndarray:
    return -np.log((px.astype(np.float64) + 1.0) / _IO)


def _macenko_fit(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, 2) OD matrix (H, E) and the 99th-percentile concentrations of tissue pixels ``px``."""
    od = _od(px)
    if len(od) < 100:
        raise StainError(f"only {len(od)} stained pixels: too few to fit the stains")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, _ALPHA), np.percentile(phi, 100 - _ALPHA)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.array([v1, v2]).T if v1[0] > v2[0] else np.array([v2, v1]).T  # haematoxylin first
    he = he * np.sign(he.sum(axis=0, keepdims=True))  # optical densities are positive
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    return he, np.percentile(conc, 99, axis=1)


def _lab(px: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(px.reshape(-1, 1, 3).astype(np.uint8)).reshape(-1, 3)


@dataclass(frozen=True)
class StainNormalizer:
    """One slide's fitted normalisation: call it on (B, H, W, 3) uint8 patches."""

    method: str
    source: dict[str, Any]
    target: dict[str, Any]
    reference: str = "default"
    _pinv: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        shape = batch.shape
        px = batch.reshape(-1, shape[-1])[:, :3]
        if self.method == "macenko":
            pinv = self._pinv if self._pinv is not None else np.linalg.pinv(self.source["he"])
            conc = pinv @ _od(px).T  # (2, N) stain concentrations
            conc *= (self.target["max_c"] / self.source["max_c"])[:, None]
            out = (_IO * np.exp(-(self.target["he"] @ conc))).T
        else:
            from skimage.color import lab2rgb

            lab = _lab(px)
            lab = (lab - self.source["mean"]) / self.source["std"] * self.target["std"] + self.target["mean"]
            out = lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3) * 255.0
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(*shape[:-1], 3)

    def attrs(self) -> dict[str, Any]:
        """What an output records of it."""
        return {"stain_norm": self.method, "stain_reference": self.reference}


def _fit(method: str, px: np.ndarray) -> dict[str, Any]:
    if method == "macenko":
        he, max_c = _macenko_fit(px)
        return {"he": he, "max_c": max_c}
    if len(px) < 100:
        raise StainError(f"only {len(px)} stained pixels: too few to fit the stains")
    lab = _lab(px)
    return {"mean": lab.mean(axis=0), "std": np.maximum(lab.std(axis=0), 1e-6)}


def fit_stain_normalizer(
    slide: Any, method: str, reference: str | os.PathLike[str] | None = None
) -> StainNormalizer | None:
    """The slide's normalisation to ``reference`` (an image file; None: the bundled default),
    fitted on the tissue of its thumbnail; None for ``method="none"``."""
    if method not in STAIN_METHODS:
        raise ValueError(f"stain normalisation must be one of {', '.join(STAIN_METHODS)}, not {method!r}")
    if method == "none":
        return None
    try:
        source = _fit(method, tissue_pixels(slide.thumbnail(1024)))
    except StainError as err:
        raise StainError(f"{slide.path}: cannot fit {method} stain normalisation: {err}") from None
    if reference is None:
        target: dict[str, Any] = ({"he": MACENKO_HE, "max_c": MACENKO_MAX_C} if method == "macenko"
                                  else {"mean": REINHARD_LAB[0], "std": REINHARD_LAB[1]})
        name = "default"
    else:
        ref = Path(reference)
        try:
            from PIL import Image

            with Image.open(ref) as im:
                im.thumbnail((2048, 2048))
                pixels = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise StainError(f"{ref}: cannot be read as a stain reference image: {err}") from None
        try:
            target = _fit(method, tissue_pixels(pixels))
        except StainError as err:
            raise StainError(f"{ref}: cannot fit {method} stain normalisation: {err}") from None
        name = str(ref)
    pinv = np.linalg.pinv(source["he"]) if method == "macenko" else None
    return StainNormalizer(method, source, target, name, pinv)
