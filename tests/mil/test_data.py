"""Label files and feature bags."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xmag.mil import (
    MILError,
    read_labels,
    slide_stem,
)


def test_label_files(tmp_path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text("slide_id,label\nTCGA-A1.0C4B-9D3C,10\ndir/b.svs,2\nc.ndpi,2\n")
    table = read_labels(csv)
    assert table.kind == "slide" and table.stems == ["TCGA-A1.0C4B-9D3C", "b", "c"]
    assert table.classes == ["2", "10"] and table.y.tolist() == [1, 0, 0]  # numeric order
    assert slide_stem("x/TCGA-1.2.svs") == "TCGA-1.2"
    csv.write_text("slide,x,y,label\na,0,0,t\na,896,0,n\n")
    table = read_labels(csv)
    assert table.kind == "patch" and table.xy.tolist() == [[0, 0], [896, 0]]
    csv.write_text("slide,label\na,t\na,n\n")
    with pytest.raises(MILError, match="listed 2 times"):
        read_labels(csv)
    csv.write_text("name,class\na,t\n")
    with pytest.raises(MILError, match="needs a 'slide' and a 'label' column"):
        read_labels(csv)


def test_bags_from_two_models_are_refused(tmp_path) -> None:
    from napari_xmag.features import FeatureSet, write_features
    from napari_xmag.mil import load_bags

    for name, dim in (("a", 8), ("b", 16)):
        bag = FeatureSet(np.zeros((2, 2)), np.zeros((2, dim)), {"model": "m"})
        write_features(tmp_path / f"{name}.h5", bag)
    (tmp_path / "l.csv").write_text("slide,label\na,x\nb,y\n")
    with pytest.raises(MILError, match="embed all slides with one model"):
        load_bags(read_labels(tmp_path / "l.csv"), tmp_path)
