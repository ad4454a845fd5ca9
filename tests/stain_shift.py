"""A synthetic stain shift of real tissue: CMU-1's pixels re-expressed with another lab's stains
(a haematoxylin that absorbs more red, an eosin that absorbs more blue; 30% more haematoxylin,
20% less eosin), written as a slide with CMU-1's µm/px, for the stain normalisation tests and
benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MPP = 0.499
SHIFTED_HE = np.array([[0.85, 0.25], [0.48, 0.90], [0.22, 0.35]])


def shift_stains(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with its stains replaced: concentrations from CMU-1's own Macenko fit, rebuilt
    with :data:`SHIFTED_HE` (columns normalised), haematoxylin x1.3, eosin x0.8."""
    from napari_xmag.stain import _IO, _macenko_fit, _od, tissue_pixels

    he, _ = _macenko_fit(tissue_pixels(rgb[::4, ::4]))
    px = rgb.reshape(-1, 3)
    conc = np.linalg.pinv(he) @ _od(px).T
    conc *= np.array([[1.3], [0.8]])
    target = SHIFTED_HE / np.linalg.norm(SHIFTED_HE, axis=0, keepdims=True)
    out = (_IO * np.exp(-(target @ conc))).T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def write_slide(rgb: np.ndarray, path: Path) -> Path:
    """A tiled TIFF with CMU-1's µm/px (as pixels per centimetre), which OpenSlide opens."""
    import tifffile

    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path
