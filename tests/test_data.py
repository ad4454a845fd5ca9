"""The test slides live in the repository: every file matches its README's sha256, and a copy of
the repository with nothing beside it (no ../shared, no XMAG_TEST_SLIDES) runs its tests."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cases import ALL_CASES, ROOT

DATA = ROOT / "tests" / "data"


def readme_hashes() -> dict[str, str]:
    text = (DATA / "README.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.MULTILINE)}


def repository_files() -> list[str]:
    """What a clone holds: git's tracked and not-ignored files, or, outside git, the tree less
    what is built or installed."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [rel for rel in listed.split("\0") if rel and (ROOT / rel).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "__pycache__", ".pytest_cache", "site", ".ci-cache", ".tox", "build", "dist"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_every_test_slide_is_the_published_file() -> None:
    hashes = readme_hashes()
    assert sorted(hashes) == sorted(case.file for case in ALL_CASES)  # one row per fixture, no more
    for name, digest in hashes.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_a_copy_with_nothing_beside_it_runs_its_tests(tmp_path: Path) -> None:
    """The repository's files alone (as `git clone` gives them), two folders below an empty one:
    the case-driven tests find their slides in the copy."""
    copy = tmp_path / "empty" / "napari-xmag"
    for rel in repository_files():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    assert not (copy.parent.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "XMAG_TEST_SLIDES"}
    env["PYTHONPATH"] = str(copy / "src")  # the copy's package, not this checkout's
    where = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'tests'); import cases; print(cases.SLIDES)"],
        cwd=copy, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(where.stdout.strip()) == copy / "tests" / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "tests/test_data.py::test_every_test_slide_is_the_published_file",
         "tests/test_slide.py::test_metadata", "tests/test_slide.py::test_bad_files_raise_one_clear_error",
         "tests/test_cli.py::test_info_on_every_test_slide",
         "-o", "addopts=--import-mode=importlib"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed == 1 + 3 + 3 + len(ALL_CASES), proc.stdout[-500:]
