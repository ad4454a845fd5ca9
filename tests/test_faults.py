"""Crash tests with real processes: ``xmag embed`` and ``xmag distill`` killed with SIGKILL mid-run.

The rerun of the same command must finish with the outputs of an uninterrupted run (embeddings
bit-equal on the CPU; the training log and the exported student equal after ``--resume``) and
leave no partial file behind: no hidden temporary anywhere in the output folder.

The kills land at a known point, never after a blind sleep: ``xmag embed`` once its progress bar
shows some but not all patches embedded (mid-forward), ``xmag distill`` once the log shows a step
past the first checkpoint. A kill during a write is made the same way: a process that is inside
``atomic_path`` writing the very output (the checkpoint, the features file) says so and is killed,
leaving exactly what such a kill leaves, ``.NAME.XXXXXXXX.part/``. The processes run one at a time
(the reference first): two at once on two cores would only make both slower.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cases import CMU1

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CLI = [sys.executable, "-m", "napari_xmag.cli"]
STEP_TIMEOUT = 180  # seconds for any one wait; a loaded 2-core machine is slow, a hung one is not

# A process that writes ``argv[1]`` through atomic_path and is killed in the middle of it;
# argv[2] "dir" builds a folder (a zarr store, a model), anything else a file.
WRITER = """
import sys, time
from napari_xmag._atomic import OutputKind, atomic_path
with atomic_path(sys.argv[1], OutputKind("test output", lambda p: True)) as tmp:
    if sys.argv[2] == "dir":
        tmp.mkdir()
        tmp = tmp / "zarr.json"
    tmp.write_bytes(b"half a file")
    print("writing", flush=True)
    if sys.stdin.readline() != "finish\\n":
        time.sleep(600)
    tmp.write_bytes(b"a whole file")
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XMAG_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def _tail(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.replace("\r", "\n")[-3000:]


def _run(args: list[str], log: Path, env: dict[str, str]) -> None:
    """Run the CLI to the end; fail with its output if it does not succeed."""
    with log.open("w") as fh:
        rc = subprocess.run([*CLI, *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                            timeout=STEP_TIMEOUT).returncode
    assert rc == 0, f"xmag {args[0]} exited {rc}:\n{_tail(log)}"


def _kill_when(args: list[str], log: Path, env: dict[str, str], ready: Callable[[], bool], what: str) -> None:
    """Start the CLI, SIGKILL it as soon as ``ready()``; fail if it ends or hangs before that."""
    with log.open("w") as fh:
        proc = subprocess.Popen([*CLI, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not ready():
            ended = f"xmag {args[0]} ended (rc {proc.returncode}) before {what}"
            assert proc.poll() is None, f"{ended}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no {what} after {STEP_TIMEOUT} s:\n{_tail(log)}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"xmag {args[0]} finished before the kill:\n{_tail(log)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _killed_writer(path: Path, kind: str = "file") -> Path:
    """What a process killed while writing ``path`` leaves: its temporary folder, returned."""
    before = set(path.parent.glob(".*")) if path.parent.exists() else set()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (part,) = set(path.parent.glob(".*")) - before
    assert re.fullmatch(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.part", part.name) and part.is_dir()
    return part


def _hidden(folder: Path) -> list[Path]:
    """Temporaries anywhere under ``folder`` (every one is a hidden name: ``.NAME.*.part``)."""
    return sorted(folder.rglob(".*"))


# ---- the helper every writer uses ---------------------------------------------------------------
def test_stale_temporaries_of_dead_writers_go_and_no_one_elses(tmp_path) -> None:
    """A dead writer's temporary is removed; a live writer's, another target's, or a folder
    that merely has a temporary's name (no owner record) is kept."""
    from napari_xmag._atomic import OutputKind, atomic_path, remove_stale_parts

    ours = OutputKind("test output", lambda p: True)

    out = tmp_path / "out"
    live = subprocess.Popen([sys.executable, "-c", WRITER, str(out / "a.h5"), "file"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "writing\n"
        (live_part,) = out.glob(".a.h5.*.part")
        dead = _killed_writer(out / "a.h5")  # (a writer's start removes the dead: this one came after)
        other = _killed_writer(out / "a.h5.zarr", "dir")  # another output whose name starts alike
        # folders with a temporary's name but no owner record are not ours, however old
        unowned_old, unowned_new = out / ".a.h5.abcd1234.part", out / ".a.h5.wxyz6789.part"
        unowned_old.mkdir(), unowned_new.mkdir()
        os.utime(unowned_old, (time.time() - 3600,) * 2)

        assert remove_stale_parts(out / "a.h5") == [dead]
        assert live_part.exists() and other.exists() and unowned_new.exists() and unowned_old.exists()
        with atomic_path(out / "a.h5", ours) as tmp:  # a concurrent writer of the same file is not disturbed
            tmp.write_bytes(b"mine")
        assert live_part.exists() and (out / "a.h5").read_bytes() == b"mine"

        live.stdin.write("finish\n")
        live.stdin.close()
        assert live.wait(timeout=60) == 0
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert (out / "a.h5").read_bytes() == b"a whole file" and not live_part.exists()
    remove_stale_parts(out / "a.h5.zarr")
    assert _hidden(out) == sorted([unowned_old, unowned_new])


# ---- xmag embed -------------------------------------------------------------------------------
def _read_h5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    with h5py.File(path, "r") as f:
        arrays = {name: f[name][:] for name in f}
        attrs = {name: dict(f[name].attrs) for name in f}
    attrs["features"].pop("seconds")  # the one timing
    return arrays, attrs


def test_killed_embed_reruns_to_the_uninterrupted_features(tmp_path) -> None:
    """SIGKILL mid-forward writes nothing; a kill mid-write leaves only a temporary, which the
    rerun removes; the rerun's coords and features are bit-equal to an uninterrupted run's."""
    from napari_xmag.models import create_model, save_model

    env = _env(tmp_path)
    model = save_model(create_model("xmag", weights="random", tiny=True), tmp_path / "model")
    # 54 patches at 20x in batches of 2: a run of a few seconds, killed after a batch or two
    def args(out: Path) -> list[str]:
        return ["embed", str(CMU1.path), "--model", str(model), "--out", str(out), "--mpp", "0.5",
                "--batch-size", "2", "--workers", "1", "--device", "cpu"]

    _run(args(tmp_path / "ref"), tmp_path / "ref.log", env)
    reference = tmp_path / "ref" / f"{CMU1.name}.h5"

    out, log = tmp_path / "out", tmp_path / "killed.log"

    def mid_forward() -> bool:
        done = re.findall(r"(\d+)/(\d+) \[", _tail(log))
        return bool(done) and 0 < int(done[-1][0]) < int(done[-1][1]) - 10

    _kill_when(args(out), log, env, mid_forward, "a progress line")
    assert not out.exists() or (not list(out.glob("*.h5")) and not _hidden(out))  # nothing written

    stale = _killed_writer(out / reference.name)  # as a kill inside write_features would leave
    _run(args(out), tmp_path / "rerun.log", env)
    assert not stale.exists() and _hidden(out) == [], _hidden(out)
    assert [p.name for p in out.iterdir()] == [reference.name]
    (arrays, attrs), (ref_arrays, ref_attrs) = _read_h5(out / reference.name), _read_h5(reference)
    assert arrays.keys() == ref_arrays.keys() == {"coords", "features"}
    assert all(np.array_equal(arrays[k], ref_arrays[k]) for k in arrays) and len(arrays["coords"]) == 54
    assert attrs == ref_attrs

    # a kill after the rename but before the clean-up: the finished file is skipped, the rest goes
    from napari_xmag.embed import EmbedSettings, embed_slide

    stale = _killed_writer(out / reference.name)
    settings = EmbedSettings(mpp=0.5, batch_size=2, workers=1, device="cpu")
    result = embed_slide(CMU1.path, create_model(model), out, settings, progress=False)
    assert result.skipped and not stale.exists() and _hidden(out) == []


# ---- xmag distill -------------------------------------------------------------------------------
TINY = {
    "teacher": "uni2-h", "teacher_weights": "random", "teacher_tiny": True,
    "teacher_overrides": {"init_values": 1.0},
    "student": "xmag", "student_weights": "random", "student_tiny": True,
    "student_overrides": {"img_size": 112},
    "patch_size": 112, "crop_size": 112, "cache_workers": 0,
}


def _log_rows(out: Path) -> list[dict[str, str]]:
    """The complete rows of OUT/log.csv without the timing column."""
    if not (out / "log.csv").exists():
        return []
    with (out / "log.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if None not in r.values()]
    return [{k: v for k, v in r.items() if k != "pairs_per_s"} for r in rows]


def test_killed_distill_resumes_to_the_uninterrupted_run(tmp_path) -> None:
    """SIGKILL after the first checkpoint, mid-run; ``--resume`` ends where a straight run does.

    A rerun without ``--resume`` into the folder is refused with one line that says to pass
    ``--resume`` (exit 2, nothing touched): the folder may be another run's by mistake, and
    continuing someone's run silently, or starting over on top of it, would both surprise.
    With ``--resume`` the run continues from the checkpoint exactly (same data order,
    augmentations, optimiser and random states): the log rows (all but the pairs/s timing) and
    the exported student's weights equal the straight run's, the log rows the killed run wrote
    after its checkpoint are replaced, and a checkpoint half-written at the kill is removed.
    """
    env = _env(tmp_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        **TINY, "stride": 56, "min_tissue": 0.5, "steps": 10, "batch_size": 2, "lr": 1e-3,
        "warmup_steps": 2, "five_x_source": "downsample",
    }))

    def args(out: Path, *more: str) -> list[str]:
        return ["distill", str(CMU1.path), "--out", str(out), "--config", str(config), "--workers", "0",
                "--checkpoint-every", "4", "--log-every", "1", "--no-progress", *more]

    straight = tmp_path / "straight"
    _run(args(straight), tmp_path / "straight.log", env)

    out = tmp_path / "out"
    _kill_when(args(out), tmp_path / "killed.log", env,
               lambda: any(int(r["step"]) > 4 for r in _log_rows(out)), "a logged step past the checkpoint")
    assert (out / "checkpoint.pt").exists() and not (out / "student").exists()
    logged = [int(r["step"]) for r in _log_rows(out)]
    assert 4 < logged[-1] < 10, logged

    log_before = (out / "log.csv").read_bytes()
    refused = subprocess.run([*CLI, *args(out)], capture_output=True, text=True, env=env,
                             timeout=STEP_TIMEOUT)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and (out / "log.csv").read_bytes() == log_before

    stale = _killed_writer(out / "checkpoint.pt")  # a kill during a checkpoint save
    _run(args(out, "--resume"), tmp_path / "resumed.log", env)

    assert not stale.exists() and _hidden(out) == [], _hidden(out)
    assert [r["step"] for r in _log_rows(out)] == [str(s) for s in range(1, 11)]
    assert _log_rows(out) == _log_rows(straight)
    # the tensors, not the file's bytes: safetensors writes its metadata in a random order
    weights, straight_weights = (load_file(d / "student" / "model.safetensors") for d in (out, straight))
    assert weights.keys() == straight_weights.keys()
    assert all(torch.equal(weights[k], straight_weights[k]) for k in weights)
    def read(name: str) -> tuple[dict, dict]:
        return tuple(json.loads((d / "student" / name).read_text()) for d in (out, straight))

    model, straight_model = read("config.json")  # its sha256 is the file's, bytes and all
    assert model.pop("sha256") and straight_model.pop("sha256") and model == straight_model
    how, straight_how = read("distillation.json")
    assert how["config"].pop("out_dir") != straight_how["config"].pop("out_dir")
    assert how == straight_how
    assert sorted(p.name for p in (out / "student").iterdir()) == [
        "config.json", "distillation.json", "model.safetensors"]
