"""Slide file forensics: a TIFF claiming huge dimensions is refused at open."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from cases import CMU1
from hazards import one_line_refusal, run_cli


def _sparse_tiff(path: Path, size: int, tile: int = 2048) -> Path:
    """A tiled deflate RGB TIFF of ``size`` x ``size`` px whose every tile is one white tile:
    a few kilobytes declaring gigabytes."""
    data = zlib.compress(b"\xff" * (tile * tile * 3), 9)
    across = -(-size // tile)
    tiles = across * across
    entries = [  # tag, type, count, value (inline) or None (filled below)
        (256, 4, 1, size), (257, 4, 1, size), (258, 3, 3, None), (259, 3, 1, 8), (262, 3, 1, 2),
        (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, tiles, None),
        (325, 4, tiles, None),
    ]
    header = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = header + ifd_size
    offsets_at = bits_at + 6
    counts_at = offsets_at + 4 * tiles
    data_at = counts_at + 4 * tiles
    out = bytearray(b"II*\x00" + struct.pack("<I", header))
    out += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if value is None:
            value = {258: bits_at, 324: offsets_at, 325: counts_at}[tag]
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 8, 8, 8)
    out += struct.pack(f"<{tiles}I", *([data_at] * tiles))
    out += struct.pack(f"<{tiles}I", *([len(data)] * tiles))
    out += data
    path.write_bytes(bytes(out))
    return path


@pytest.mark.parametrize("size", [30000, 1_000_000])
def test_a_tiff_claiming_huge_dimensions_is_refused_at_open(tmp_path: Path, size: int) -> None:
    tiff = _sparse_tiff(tmp_path / "huge.tif", size)
    assert tiff.stat().st_size < 16 << 20
    proc = run_cli("embed", str(tiff), "--out", str(tmp_path / "o"), "--weights", "random", "--mpp-override",
                   "0.5")
    one_line_refusal(proc, str(tiff), f"declares {size} x {size} px", "image data is missing")
    assert not (tmp_path / "o").exists()


# ---- brightfield or not, and DICOM -----------------------------------------------------------
def _dark_background_slide(path):
    """A fluorescence-like RGB scan at 0.5 µm/px: black, with one bright DAPI-blue square exactly
    on the 5x patch at (896, 896)."""
    import tifffile

    rgb = np.zeros((2700, 2700, 3), np.uint8)
    rgb[896:1792, 896:1792] = (40, 60, 230)
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")
    return path


def test_a_dark_background_slide_is_refused_unless_allowed(tmp_path, capsys, monkeypatch) -> None:
    from napari_xmag.cli import main
    from napari_xmag.embed import EmbedSettings, NotBrightfieldError, check_slide, embed_slide
    from napari_xmag.models import create_model
    from napari_xmag.slide import Slide

    slide = _dark_background_slide(tmp_path / "dapi.tif")
    with Slide(slide) as s:
        assert s.mpp == pytest.approx(0.5)
        assert "dark background" in s.brightfield_problem and "mostly blue" in s.brightfield_problem
    with Slide(CMU1.path) as s:
        assert s.brightfield_problem is None  # stained tissue on bright glass
    with pytest.raises(NotBrightfieldError, match=r"dapi.tif: .*dark background.*--allow-non-he"):
        check_slide(slide)
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    proc = run_cli("embed", str(slide), "--out", str(tmp_path / "refused"))
    one_line_refusal(proc, str(slide), "not a stained brightfield slide")
    assert not (tmp_path / "refused" / "dapi.h5").exists()

    model = create_model("xmag", weights="random", tiny=True)
    out = embed_slide(slide, model, tmp_path / "allowed", EmbedSettings(allow_non_he=True), progress=False)
    assert out.patches >= 1
    assert main(["embed", str(slide), "--out", str(tmp_path / "cli"), "--allow-non-he", "--no-progress"]) == 0


def test_a_dicom_file_openslide_rejects_is_explained(tmp_path) -> None:
    from napari_xmag.slide import Slide, SlideOpenError

    fake = tmp_path / "image.dcm"
    fake.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0" * 4)
    with pytest.raises(SlideOpenError, match=r"image.dcm: a DICOM file OpenSlide cannot open as a whole-slide"
                       r" image .*not a WSI DICOM.*series is incomplete"):
        Slide(fake)
