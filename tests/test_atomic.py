"""Atomic outputs: a user's folder is never removed, concurrent writers keep their temporaries,
links are not followed, kinds are checked again at the rename."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature_sets import features_file
from hazards import tree_hash, user_folder
from napari_xmag._atomic import OutputExistsError, OutputKind, atomic_path, remove_stale_parts
from napari_xmag.features import read_features, write_features


# ---- temporaries are ours by their owner record, never by their name -----------------------
def test_a_users_folder_with_a_temporary_name_is_never_removed(tmp_path: Path) -> None:
    backup = user_folder(tmp_path / ".CMU-1-Small-Region.h5.backup01.part")
    os.utime(backup, (time.time() - 7 * 86400,) * 2)
    (backup / "owner").write_text("not ours")  # even with a file called owner in it
    foreign_owner = user_folder(tmp_path / ".CMU-1-Small-Region.h5.abcd1234.part")
    (foreign_owner / "owner").write_text(json.dumps({"format": "napari-xmag-part", "target": "other.h5"}))
    before = {**tree_hash(backup), **tree_hash(foreign_owner)}
    assert remove_stale_parts(tmp_path / "CMU-1-Small-Region.h5") == []
    features_file(tmp_path / "CMU-1-Small-Region.h5")
    assert {**tree_hash(backup), **tree_hash(foreign_owner)} == before


STRESS = """
import sys
from pathlib import Path
from napari_xmag._atomic import OutputKind, atomic_path
kind = OutputKind("stress", lambda p: True)
target = Path(sys.argv[1])
failed = 0
for i in range(int(sys.argv[2])):
    try:
        with atomic_path(target, kind) as tmp:
            tmp.write_bytes(b"x" * 100)
    except FileNotFoundError:
        failed += 1
print(failed)
"""


def test_concurrent_writers_never_remove_each_others_temporaries(tmp_path: Path) -> None:
    """The stress test that failed 1257 of 3000 writes: now the owner record is locked before it
    has its name, so a concurrent clean-up cannot take a live writer's temporary."""
    target = tmp_path / "out.h5"
    procs = [subprocess.Popen([sys.executable, "-c", STRESS, str(target), "500"], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    failed = [int(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs) and failed == [0, 0, 0]
    assert target.read_bytes() == b"x" * 100 and not list(tmp_path.glob(".*"))


def test_a_link_at_the_target_is_not_followed(tmp_path: Path) -> None:
    elsewhere = user_folder(tmp_path / "elsewhere")
    link = tmp_path / "case.h5"
    link.symlink_to(elsewhere)
    before = tree_hash(elsewhere)
    data = read_features(features_file(tmp_path / "real.h5"))
    with pytest.raises(OutputExistsError, match="a link to"):
        write_features(link, data)
    write_features(link, data, overwrite=True)  # replaces the link, not what it points to
    assert not link.is_symlink() and tree_hash(elsewhere) == before


def test_atomic_kind_is_checked_again_at_the_rename(tmp_path: Path) -> None:
    """A foreign file that appears while the output is being built is not replaced either."""
    target = tmp_path / "out.h5"
    kind = OutputKind("test output", lambda p: p.read_bytes() == b"ours")
    with pytest.raises(OutputExistsError), atomic_path(target, kind) as tmp:  # noqa: PT012  # raised at the rename
        tmp.write_bytes(b"ours")
        target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's" and not list(tmp_path.glob(".*"))
