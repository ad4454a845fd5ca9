"""Training configs: errors are clear."""

from __future__ import annotations

import shutil

import pytest

from cases import BOXES, CMU1
from napari_xmag.distill import (
    SlideListError,
    TrainConfig,
    read_slide_list,
    train,
)
from napari_xmag.slide import MissingMppError, MissingMppWarning
from tiny_training import TINY


# ---- configuration errors --------------------------------------------------------------------------
def test_config_errors_are_clear(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideListError, match="no slide files"):
        TrainConfig(slides=tmp_path / "empty", out_dir=tmp_path / "o")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.svs,1\n")
    with pytest.raises(SlideListError, match="needs a 'slide' column"):
        TrainConfig(slides=bad, out_dir=tmp_path / "o")
    missing = tmp_path / "missing.csv"
    missing.write_text("slide\nnot-here.svs\n")
    with pytest.raises(SlideListError, match=r"line 2: .*not-here\.svs: no such slide file"):
        TrainConfig(slides=missing, out_dir=tmp_path / "o")
    mpp = tmp_path / "mpp.csv"
    mpp.write_text(f"slide,mpp_override\n{CMU1.path},fast\n")
    with pytest.raises(SlideListError, match="mpp_override 'fast'"):
        TrainConfig(slides=mpp, out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="jitter_p is a probability"):
        TrainConfig(slides=[CMU1.path], out_dir=tmp_path / "o", jitter_p=1.5)
    with pytest.raises(ValueError, match="not a whole number of batches of 48"):
        TrainConfig(slides=[CMU1.path], out_dir=tmp_path / "o", effective_batch=100, batch_size=48)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(slides=[CMU1.path], out_dir=tmp_path / "o", precision="fp8")

    no_mpp = tmp_path / "no-mpp.csv"
    no_mpp.write_text(f"slide\n{BOXES.path}\n")
    config = TrainConfig(slides=no_mpp, out_dir=tmp_path / "o", **TINY)
    with pytest.warns(MissingMppWarning), pytest.raises(MissingMppError, match=r"boxes\.tiff.*mpp_override"):
        train(config)
    # the CSV is read relative to its folder, and mpp_override is used
    shutil.copy(CMU1.path, tmp_path / "cmu1.svs")
    ok = tmp_path / "ok.csv"
    ok.write_text("slide,mpp_override\ncmu1.svs,0.5\n")
    entries = read_slide_list(ok)
    assert entries[0].path == tmp_path / "cmu1.svs" and entries[0].mpp_override == 0.5
