"""A user's files to protect (hashed before and after), an attacker's files to refuse, and the
CLI run as a user runs it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "napari_xmag.cli"]


def tree_hash(root: Path, *, inside: bool = False) -> dict[str, str]:
    """Every entry under ``root``: type and content, links by their target. Keys start with
    ``root``'s name and include ``root`` itself, or, ``inside``, are relative to ``root``."""
    out: dict[str, str] = {}
    paths = [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]
    for p in paths[1:] if inside else paths:
        rel = str(p.relative_to(root if inside else root.parent))
        if p.is_symlink():
            out[rel] = f"link:{p.readlink()}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def user_folder(path: Path) -> Path:
    """A folder of someone's work: a document and a subfolder with a file in it."""
    (path / "chapter-2").mkdir(parents=True)
    (path / "thesis.docx").write_bytes(b"PK\x03\x04 four years of work")
    (path / "chapter-2" / "figure.png").write_bytes(b"\x89PNG figure")
    return path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line_refusal(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
