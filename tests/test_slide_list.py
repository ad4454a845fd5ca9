"""Finding slides from folders and list files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cases import BROKEN, CMU1, SMALL
from napari_xmag.slide_list import SlideEntry, SlideListError, find_slides


@pytest.fixture
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of four slide files (copies of a real one: listing opens nothing)."""
    slides = tmp_path_factory.mktemp("slides")
    for seed in range(4):
        shutil.copyfile(SMALL.path, slides / f"synthetic-{seed}.svs")
    return {"slides": slides}


def test_find_slides_from_folders_and_lists(tmp_path: Path, data: dict[str, Path]) -> None:
    synthetic = sorted(data["slides"].glob("*.svs"))
    (tmp_path / "list.txt").write_text(f"# a comment\n\n{CMU1.path}\n{synthetic[0]}\n")
    (tmp_path / "slides.csv").write_text(f"slide,mpp_override\n{BROKEN.path},0.25\n")
    found = find_slides([data["slides"], tmp_path / "list.txt", tmp_path / "slides.csv"])
    # the folder's files sorted, then the lists' new ones; the repeated slide is kept once
    assert [s.path for s in found] == [*synthetic, CMU1.path, BROKEN.path]
    assert found[-1] == SlideEntry(BROKEN.path, 0.25)
    # links keep their own names: outputs are named after them, not after what they point to
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "case-7.svs").symlink_to(CMU1.path)
    assert [s.path for s in find_slides(tmp_path / "links")] == [tmp_path / "links" / "case-7.svs"]
    with pytest.raises(SlideListError, match="no such slide file"):
        find_slides([tmp_path / "missing.svs"])
    with pytest.raises(SlideListError, match="no slide files in this folder"):
        find_slides([tmp_path / "slides.csv", tmp_path])  # tmp_path holds lists, not slides
    (tmp_path / "bad.csv").write_text("path\nx.svs\n")
    with pytest.raises(SlideListError, match="'slide' column"):
        find_slides(tmp_path / "bad.csv")
