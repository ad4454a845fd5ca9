"""What is wrong with a slide file OpenSlide refuses, or reads without complaint.

File forensics for the slide store, from the bytes alone (``struct`` and tifffile, no
OpenSlide): an empty or truncated TIFF, a TIFF that declares far more pixels than it holds, a
grayscale or fluorescence TIFF that OpenSlide would turn into false RGB.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ._memory import format_size

__all__ = [
    "MAX_PIXELS_PER_BYTE",
    "damage_reason",
    "dark_background_reason",
    "dicom_reason",
    "missing_pixels_reason",
    "not_brightfield_reason",
]

#: A brightfield slide's glass is bright; a fluorescence (or darkfield) scan's background is
#: black. Of a thumbnail's pixels, more than this fraction nearly black (brightest channel
#: under DARK_LEVEL) is a dark-background image, not a stained brightfield slide.
DARK_FRACTION = 0.5
DARK_LEVEL = 40

#: Raw level-0 bytes per byte of a single-file (TIFF-based) slide: real scans, glass included,
#: stay far below (about 10-600); a file far above holds tiles it does not have.
MAX_PIXELS_PER_BYTE = 10_000
# first four bytes -> (byte order, BigTIFF)
_TIFF_MAGIC = {
    b"II*\x00": ("<", False), b"MM\x00*": (">", False), b"II+\x00": ("<", True), b"MM\x00+": (">", True),
}
_MAX_IFDS = 4096


def damage_reason(path: str | os.PathLike[str]) -> str | None:
    """Why a file OpenSlide refused is not a slide, when the bytes tell: empty, or a truncated TIFF."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty (0 bytes)"
        with path.open("rb") as fh:
            return _tiff_truncation(fh, size)
    except OSError:
        return None


def missing_pixels_reason(path: Path, dimensions: tuple[int, int]) -> str | None:
    """Why a single-file (TIFF-based) slide cannot hold the pixels it declares, or None.

    A few kilobytes declaring 30000 x 30000 px would otherwise be read as white tiles, gigabytes
    of them: such a file is damaged or made to exhaust memory.
    """
    try:
        with path.open("rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None  # formats that keep their data beside the file (MIRAX, VMS, DICOM)
        size = path.stat().st_size
    except OSError:
        return None
    raw = 3 * int(dimensions[0]) * int(dimensions[1])
    if raw <= MAX_PIXELS_PER_BYTE * max(size, 1):
        return None
    return (
        f"declares {dimensions[0]} x {dimensions[1]} px ({format_size(raw)} of pixels) at level 0 but the"
        f" file is only {format_size(size)}: its image data is missing (a damaged or crafted file)"
    )


def _tiff_truncation(fh: Any, size: int) -> str | None:
    """A message when a TIFF's chain of image directories runs past the end of the file."""
    head = fh.read(16)
    if head[:4] not in _TIFF_MAGIC:
        return None
    order, big = _TIFF_MAGIC[head[:4]]
    count_fmt, entry, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    off_size = struct.calcsize(off_fmt)
    cut = f"the file is truncated ({size} bytes): its TIFF image directory at byte {{}} lies past its end"
    if len(head) < (16 if big else 8):
        return f"the file is truncated ({size} bytes): it ends inside the TIFF header"
    offset = struct.unpack(order + off_fmt, head[8:16] if big else head[4:8])[0]
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) < _MAX_IFDS:
        seen.add(offset)
        count_size = struct.calcsize(count_fmt)
        if offset + count_size > size:
            return cut.format(offset)
        fh.seek(offset)
        (count,) = struct.unpack(order + count_fmt, fh.read(count_size))
        end = offset + count_size + count * entry + off_size
        if end > size:
            return cut.format(offset)
        fh.seek(end - off_size)
        (offset,) = struct.unpack(order + off_fmt, fh.read(off_size))
    return None


@functools.lru_cache(maxsize=64)
def _tiff_samples(
    path: str, size: int, mtime_ns: int, dimensions: tuple[int, int] | None
) -> tuple[int, int, str, str, int, int] | None:
    """(samples, bits, photometric, sample format, width, height) of the TIFF image of
    ``dimensions`` (the first such among the first 64), or of the first image when None."""
    try:
        with tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                if i >= 64:
                    break
                size_ = (int(getattr(page, "imagewidth", -1)), int(getattr(page, "imagelength", -1)))
                if dimensions is None or size_ == dimensions:
                    return (
                        int(page.samplesperpixel), int(page.bitspersample),
                        tifffile.PHOTOMETRIC(int(page.photometric)).name,
                        tifffile.SAMPLEFORMAT(int(page.sampleformat)).name, *size_,
                    )
    except Exception:  # not a TIFF tifffile reads: nothing to say
        return None
    return None


def not_brightfield_reason(
    path: str | os.PathLike[str], dimensions: tuple[int, int] | None = None
) -> str | None:
    """Why a TIFF-based slide is not 8-bit RGB (grayscale, multi-channel fluorescence, 16-bit),
    or None when it is RGB or its format is not TIFF-based.

    OpenSlide converts any TIFF to RGBA without a word: a 16-bit grayscale or a 5-channel
    fluorescence image opens as grey or false-colour pixels, which a brightfield model would
    embed as if they were stained tissue. ``dimensions``: level 0 (width, height); the image
    of that size is examined, else the file's first image (a cheap probe).
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        stat = path.stat()
    except OSError:
        return None
    dims = None if dimensions is None else (int(dimensions[0]), int(dimensions[1]))
    found = _tiff_samples(str(path), stat.st_size, stat.st_mtime_ns, dims)
    if found is None:  # no image of level 0's size: not one whose samples can be judged
        return None
    samples, bits, photometric, sample_format, width, height = found
    colour = photometric in ("RGB", "YCBCR") and samples in (3, 4)
    if (colour or photometric == "PALETTE") and bits == 8 and sample_format == "UINT":
        return None
    names = {"MINISBLACK": "grayscale", "MINISWHITE": "grayscale", "YCBCR": "RGB"}
    kind = names.get(photometric, photometric)
    if samples > 1 and kind == "grayscale":
        kind = "multi-channel"
    fmt = {"UINT": "", "INT": " signed", "IEEEFP": " float"}.get(sample_format, f" {sample_format.lower()}")
    channels = f"{samples} channel{'s' if samples != 1 else ''} of {bits}-bit{fmt} samples"
    return f"its {width} x {height} px image is {kind} ({channels})"


def dark_background_reason(thumbnail: Any) -> str | None:
    """Why an RGB slide is not stained brightfield tissue, from its thumbnail: a dark
    background (fluorescence such as NDPI DAPI/TRITC channels, darkfield), or None. A brightfield
    slide's glass is near white; its tissue, stained, absorbs some of each channel."""
    rgb = np.asarray(thumbnail)[..., :3]
    if rgb.size == 0:
        return None
    brightest = rgb.max(axis=-1)
    dark = float((brightest < DARK_LEVEL).mean())
    if dark <= DARK_FRACTION:
        return None
    lit = rgb[brightest >= DARK_LEVEL]
    colour = ""
    if len(lit):
        mean = lit.reshape(-1, 3).mean(0)
        channel = ["red", "green", "blue"][int(mean.argmax())]
        colour = f"; what is lit is mostly {channel}"
    return (f"{dark:.0%} of it is a dark background (brightest channel under {DARK_LEVEL}/255){colour}:"
            " a fluorescence or darkfield image, not a stained brightfield slide")


def dicom_reason(path: str | os.PathLike[str], message: str) -> str | None:
    """OpenSlide's refusal of a DICOM file, explained (its own words, "Couldn't get image flavor",
    say nothing to a user), or None when ``path`` is not DICOM."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            fh.seek(128)
            dicom = fh.read(4) == b"DICM"
    except OSError:
        return None
    if not dicom and p.suffix.lower() != ".dcm":
        return None
    return (f"a DICOM file OpenSlide cannot open as a whole-slide image ({message}): either it is not"
            " a WSI DICOM (VL Whole Slide Microscopy Image Storage: a radiology or a single-frame"
            " image), or its series is incomplete: OpenSlide reads a slide from the folder holding"
            " every file of the series (one per level, plus label and overview), so copy them all")
