"""Slide file forensics: a TIFF claiming huge dimensions is refused at open."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

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
