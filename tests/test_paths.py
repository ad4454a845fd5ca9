"""Input paths: pipes and devices named like slides or lists never block."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from hazards import one_line_refusal, run_cli


# ---- pipes and devices are refused at once ------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_fifo_named_like_a_slide_never_blocks(tmp_path: Path) -> None:
    from napari_xmag._reader import get_reader

    fifo = tmp_path / "x.svs"
    os.mkfifo(fifo)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(get_reader(str(fifo))), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "get_reader blocked on a FIFO"
    reader = result[0]
    with pytest.raises(Exception, match="is a named pipe"):
        reader(str(fifo))  # claimed (a .svs), so that napari shows why it cannot open
    start = time.perf_counter()
    proc = run_cli("embed", str(fifo), "--out", str(tmp_path / "o"), "--weights", "random", timeout=60)
    one_line_refusal(proc, str(fifo), "is a named pipe")
    assert time.perf_counter() - start < 30
    tif = tmp_path / "x.tif"
    os.mkfifo(tif)
    assert get_reader(str(tif)) is None


def test_a_slide_list_linked_to_dev_zero_is_refused(tmp_path: Path) -> None:
    from napari_xmag.slide_list import SlideListError, find_slides

    listing = tmp_path / "slides.txt"
    listing.symlink_to("/dev/zero")
    with pytest.raises(SlideListError, match="is a device"):
        find_slides(listing)
