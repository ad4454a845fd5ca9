"""Slides of one stain colour (pink or purple) and the tiny student that tells them apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_xmag.models import create_model
from napari_xmag.synthetic import write_aperio_pyramid

PINK, PURPLE = (236, 150, 190), (120, 60, 160)


def colour_slide(path: Path, colour: tuple[int, int, int], seed: int, size: int = 1344) -> Path:
    """A 0.5 µm/px Aperio slide: glass around a square of one stain colour, with noise."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 245, np.float32)
    margin = size // 16
    image[margin:-margin, margin:-margin] = colour
    image += rng.normal(0, 12, (size, size, 1)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    levels = {1: image, 4: image[::4, ::4]}
    return write_aperio_pyramid(path, size, size, lambda ds, y, x, h, w: levels[ds][y : y + h, x : x + w],
                                downsamples=(1, 4), mpp=0.5, app_mag=20)


def tiny_student(**kwargs):
    """The tiny random XMAG student with LayerScale starting at 1: DINOv2's 1e-5 leaves random
    blocks near identity, so its class token would hardly see the pixels (differences of
    1e-6), and only the probe's standardisation would find the colour in float noise."""
    return create_model("xmag", weights="random", tiny=True, overrides={"init_values": 1.0}, **kwargs)
