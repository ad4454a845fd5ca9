"""The run manifest of a batch output folder: ``OUT/manifest.json`` plus a journal of records.

``manifest.json`` is the whole picture (the run's model and settings, one entry per slide). It
is rewritten twice per run, at its start and at its end; in between every finished slide is
*appended* to ``OUT/manifest.jsonl``, one JSON line, flushed to disk. A 100 000-slide run
therefore writes its 60 MB manifest twice instead of once per slide, and a run killed at any
moment loses nothing: :func:`read_manifest` folds the journal into the manifest it reads.

Several runs may share one folder, at the same time or one after another. Every rewrite
happens under an exclusive lock on the folder itself and *merges*: it starts from what is on
disk (the manifest and every run's journal lines), keeps the newest entry of each slide
(``updated``, nanoseconds), and only then overlays its own run's entries. No run's records are
lost to another's rewrite.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._atomic import OutputKind, check_target, read_small_json, write_json
from ._paths import file_problem
from ._values import json_safe

try:
    import fcntl
except ImportError:  # Windows: no folder locks; concurrent runs are then on their own
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "JOURNAL_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_KIND",
    "MANIFEST_NAME",
    "ManifestError",
    "RunManifest",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "manifest.jsonl"
MANIFEST_FORMAT = "napari-xmag-batch"
MANIFEST_VERSION = 2
STATUSES = ("done", "skipped", "failed")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file."""


def _is_manifest(path: Path) -> bool:
    data = read_small_json(path, limit=1 << 34)
    return isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT


def _is_journal(path: Path) -> bool:
    """A journal of ours: empty, or its first line is one of our records."""
    try:
        if file_problem(path) is not None:
            return False
        with path.open(encoding="utf-8") as fh:
            first = fh.readline(1 << 20)
        return not first or json.loads(first).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


MANIFEST_KIND = OutputKind("batch manifest", _is_manifest)
JOURNAL_KIND = OutputKind("batch manifest journal", _is_journal)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A batch manifest (from its file or from the batch's output folder), with every record
    its journal holds folded in."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    problem = file_problem(path, max_bytes=1 << 34)
    if problem == "no such file":
        raise ManifestError(f"{path}: no batch manifest here")
    if problem:
        raise ManifestError(f"{path}: {problem}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: not a readable batch manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a napari-xmag batch manifest")
    records = _journal(path.parent / JOURNAL_NAME)
    if records:
        manifest["slides"] = _merge(manifest.get("slides", []), records)
        _count(manifest)
    return manifest


def _journal(path: Path) -> list[dict[str, Any]]:
    """The slide records of a journal; a line cut short by a killed run is left out."""
    if file_problem(path) is not None:
        return []
    records = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("slide"), dict):
                records.append(record["slide"])
    return records


def _merge(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per slide path, the most recently updated; first-seen order kept."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for entry in group:
            key = str(entry.get("path"))
            old = merged.get(key)
            if old is None or int(entry.get("updated") or 0) >= int(old.get("updated") or 0):
                merged[key] = entry
    return list(merged.values())


def _count(manifest: dict[str, Any]) -> None:
    counts = dict.fromkeys((*STATUSES, "pending"), 0)
    for slide in manifest["slides"]:
        if slide.get("in_run", True):
            counts[slide["status"]] = counts.get(slide["status"], 0) + 1
    manifest["counts"] = counts


class RunManifest:
    """One run's view of the manifest of ``out_dir``: started, recorded slide by slide, finished.

    ``overwrite``: a ``manifest.json`` (or journal) there that is not ours is replaced rather
    than refused.
    """

    def __init__(self, out_dir: Path, run_id: str, *, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.journal = self.out_dir / JOURNAL_NAME
        self.run_id = run_id
        self.overwrite = overwrite
        for path, kind in ((self.path, MANIFEST_KIND), (self.journal, JOURNAL_KIND)):
            check_target(path, kind, overwrite)  # before any work

    def previous(self) -> dict[str, Any] | None:
        """What earlier runs recorded here (None when nothing, or only a damaged manifest)."""
        if not _is_manifest(self.path):
            return None
        try:
            return read_manifest(self.path)
        except ManifestError:
            return None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive, across processes, for the length of a rewrite (the folder is the lock)."""
        if fcntl is None:
            yield
            return
        fd = os.open(self.out_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def write(self, manifest: dict[str, Any]) -> None:
        """Rewrite ``manifest.json``: what is on disk (other runs' entries, journal records)
        merged under this run's entries, then the journal emptied."""
        with self._locked():
            on_disk = self.previous()
            ours = [e for e in manifest["slides"] if e.get("run") == self.run_id]
            others = [] if on_disk is None else [
                {**e, "in_run": False} for e in on_disk.get("slides", []) if e.get("run") != self.run_id
                and _still_listed(e)
            ]
            manifest["slides"] = _merge(others, ours)
            for entry in manifest["slides"]:
                entry["in_run"] = entry.get("run") == self.run_id
            _count(manifest)
            write_json(self.path, manifest, MANIFEST_KIND, overwrite=self.overwrite)
            with contextlib.suppress(FileNotFoundError):
                if _is_journal(self.journal) or self.overwrite:
                    self.journal.unlink()  # every record is in the manifest now

    def record(self, entry: dict[str, Any]) -> None:
        """Append one slide's record to the journal, on disk before this returns."""
        entry["run"] = self.run_id
        entry["updated"] = time.time_ns()
        line = json.dumps({"format": MANIFEST_FORMAT, "run": self.run_id, "slide": json_safe(entry)}) + "\n"
        with self._locked():
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)


def _still_listed(entry: dict[str, Any]) -> bool:
    """Another run's entry stays listed while it is news: not finished, failed, or its output there."""
    if entry.get("status") in ("done", "skipped"):
        return bool(entry.get("output")) and Path(entry["output"]).exists()
    return True
