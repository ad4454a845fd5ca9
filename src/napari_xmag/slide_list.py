"""Which slides: folders, slide files and slide lists, as the CLI and the library take them.

One place for the suffixes a slide folder is searched for and for the list formats: a ``.txt``
file with one path a line (``#`` comments) or a CSV with a ``slide`` column and optionally
``mpp_override``; relative paths are relative to the list. ``xmag batch`` and ``xmag distill``
read slides through :func:`find_slides`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ._paths import MAX_LIST_BYTES, file_problem
from .slide import parse_mpp

__all__ = ["LIST_SUFFIXES", "SLIDE_SUFFIXES", "SlideEntry", "SlideListError", "find_slides"]

#: Files a folder of slides is searched for (what OpenSlide 4 opens).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
)
#: Slide lists: one path per line (``#`` comments), or a CSV with a ``slide`` column (and
#: optionally ``mpp_override``); relative paths are relative to the list.
LIST_SUFFIXES = (".txt", ".csv")


class SlideListError(ValueError):
    """The slides named cannot be used: a missing file, a bad list; the message names the cause."""


@dataclass(frozen=True)
class SlideEntry:
    """One slide and, for files that record none, its level-0 µm/px."""

    path: Path
    mpp_override: float | None = None


def find_slides(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | SlideEntry],
) -> list[SlideEntry]:
    """The slides named by files, folders (their slide files, by suffix, not recursive) and
    ``.txt``/``.csv`` lists, in the order given, each once, as absolute paths (links kept).

    A folder's ``.dcm`` files are one DICOM slide (OpenSlide opens it from any of its files).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: dict[Path, SlideEntry] = {}
    for source in sources:
        for slide in _expand(source):
            found.setdefault(slide.path, slide)
    if not found:
        raise SlideListError("no slides given")
    return list(found.values())


def _expand(source: str | os.PathLike[str] | SlideEntry) -> list[SlideEntry]:
    if isinstance(source, SlideEntry):
        path = Path(source.path).expanduser()
        if not path.exists():
            raise SlideListError(f"{path}: no such slide file")
        return [replace(source, path=_absolute(path))]
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        dicom = [p for p in files if p.suffix.lower() == ".dcm"]
        files = [p for p in files if p.suffix.lower() != ".dcm"] + dicom[:1]
        if not files:
            looked = ", ".join(SLIDE_SUFFIXES)
            raise SlideListError(f"{path}: no slide files in this folder (looked for {looked})")
        return [SlideEntry(_absolute(p)) for p in sorted(files)]
    if not path.exists():
        raise SlideListError(f"{path}: no such slide file, folder or list")
    if path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    problem = file_problem(path)
    if problem:
        raise SlideListError(f"{path}: {problem}")
    return [SlideEntry(_absolute(path))]


def _read_list(path: Path) -> list[SlideEntry]:
    """A ``.txt`` list (one path a line) or a CSV with ``slide`` (and ``mpp_override``) columns."""
    problem = file_problem(path, max_bytes=MAX_LIST_BYTES)
    if problem:  # a link to /dev/zero would be read for ever
        raise SlideListError(f"{path}: {problem}")
    rows: list[tuple[int, str, str]] = []  # line, slide, mpp_override
    with path.open(newline="", encoding="utf-8-sig") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(fh)
            columns = [(c or "").strip() for c in reader.fieldnames or []]
            if "slide" not in columns:
                raise SlideListError(
                    f"{path}: the CSV needs a 'slide' column (and optionally 'mpp_override');"
                    f" its columns are {columns or 'none'}"
                )
            for line, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                rows.append((line, row["slide"], row.get("mpp_override", "")))
        else:
            for line, text in enumerate(fh, start=1):
                text = text.strip()
                if text and not text.startswith("#"):
                    rows.append((line, text, ""))
    slides = []
    for line, name, mpp in rows:
        if not name:
            raise SlideListError(f"{path}, line {line}: empty slide path")
        slide = Path(name).expanduser()
        slide = slide if slide.is_absolute() else path.parent / slide
        try:
            override = parse_mpp(mpp) if mpp else None
        except ValueError:
            raise SlideListError(
                f"{path}, line {line}: mpp_override {mpp!r} is not a positive µm/px"
            ) from None
        if slide.is_dir():
            slides += [replace(s, mpp_override=override) for s in _expand(slide)]
        elif slide.exists():
            slides.append(SlideEntry(_absolute(slide), override))
        else:
            raise SlideListError(f"{path}, line {line}: {slide}: no such slide file")
    if not slides:
        raise SlideListError(f"{path}: the list names no slides")
    return slides


def _absolute(path: Path) -> Path:
    """Absolute and normalised, but links kept: a folder of links to a slide store must give
    outputs named after the links, not after the files they point to."""
    return Path(os.path.abspath(path))  # noqa: PTH100  (resolve() would follow the links)
