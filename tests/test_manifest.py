"""The batch manifest: runs sharing a folder keep each other's records; a finished slide is one
appended line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# ---- manifests: shared by concurrent runs, appended to, not rewritten ---------------
RUN = """
import sys, time
from pathlib import Path
from napari_xmag.manifest import RunManifest
out, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log = RunManifest(out, name)
entries = [{"run": name, "name": f"{name}-{i}.svs", "path": f"/slides/{name}-{i}.svs", "status": "pending",
            "updated": time.time_ns()} for i in range(n)]
manifest = {"format": "napari-xmag-batch", "format_version": 2, "run": name, "slides": entries}
log.write(manifest)
for entry in entries:
    output = out / (entry["name"] + ".h5")
    output.write_bytes(b"features")
    entry.update(status="done", output=str(output), updated=time.time_ns())
    log.record(entry)
    time.sleep(0.001)
manifest["slides"] = entries
log.write(manifest)
"""


def test_two_runs_in_one_folder_keep_each_others_records(tmp_path: Path) -> None:
    from napari_xmag.manifest import read_manifest

    out = tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RUN, str(out), name, "60"]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    manifest = read_manifest(out)
    names = sorted(e["name"] for e in manifest["slides"])
    assert names == sorted([f"a-{i}.svs" for i in range(60)] + [f"b-{i}.svs" for i in range(60)])
    assert {e["status"] for e in manifest["slides"]} == {"done"}


def test_a_finished_slide_is_one_appended_line(tmp_path: Path) -> None:
    from napari_xmag.manifest import JOURNAL_NAME, MANIFEST_NAME, RunManifest, read_manifest

    out = tmp_path / "out"
    out.mkdir()
    log = RunManifest(out, "run")
    entries = [{"run": "run", "name": f"{i}.svs", "path": f"/s/{i}.svs", "status": "pending", "updated": 0,
                "reason": "x" * 400} for i in range(2000)]
    log.write({"format": "napari-xmag-batch", "run": "run", "slides": entries})
    manifest_bytes = (out / MANIFEST_NAME).read_bytes()
    for entry in entries[:10]:
        entry["status"] = "done"
        log.record(entry)
    assert (out / MANIFEST_NAME).read_bytes() == manifest_bytes  # not rewritten per slide
    journal = (out / JOURNAL_NAME).read_text().splitlines()
    assert len(journal) == 10 and len((out / JOURNAL_NAME).read_bytes()) < len(manifest_bytes) / 100
    # a reader (or a run killed now) sees every finished slide
    assert sum(e["status"] == "done" for e in read_manifest(out)["slides"]) == 10
    with (out / JOURNAL_NAME).open("a") as fh:  # a line cut short by a kill is left out
        fh.write('{"format": "napari-xmag-batch", "slide": {"path": "/s/1')
    assert sum(e["status"] == "done" for e in read_manifest(out)["slides"]) == 10
