"""``xmag batch``: one dask task per slide on a real LocalCluster of two worker processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cases import CMU1, SLIDES
from napari_xmag import batch
from napari_xmag.batch import (
    MANIFEST_NAME,
    BatchError,
    parse_resources,
    read_manifest,
    run_batch,
)
from napari_xmag.cli import main
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features
from napari_xmag.models import create_model, save_model
from napari_xmag.synthetic import mirrored_source, tissue_image, write_aperio_pyramid

SETTINGS = EmbedSettings(batch_size=4, device="cpu")
BROKEN = SLIDES / "broken.svs"
UNREADABLE = SLIDES / "unreadable.svs"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny saved model and four small synthetic slides (1 to 4 patches each at 5x)."""
    root = tmp_path_factory.mktemp("batch-data")
    model = save_model(create_model("xmag", weights="random", tiny=True), root / "model")
    slides = root / "slides"
    slides.mkdir()
    for seed in range(4):
        image = tissue_image(1792, 1344, seed=seed)
        write_aperio_pyramid(slides / f"synthetic-{seed}.svs", 1792, 1344, mirrored_source(image, (1, 4)),
                             downsamples=(1, 4))
    return {"model": model, "slides": slides, "root": root}


@pytest.fixture(scope="module")
def reference(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Each good slide embedded in this process, one torch thread as on the workers."""
    import torch

    out = tmp_path_factory.mktemp("batch-reference")
    model = create_model(data["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        slides = [*sorted(data["slides"].glob("*.svs")), CMU1.path]
        runs = {p.name: embed_slide(p, model, out, SETTINGS, progress=False) for p in slides}
        return {name: read_features(run.output) for name, run in runs.items()}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of two single-threaded worker processes, shared by the tests that do not kill."""
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c


def _by_name(manifest: dict) -> dict[str, dict]:
    return {s["name"]: s for s in manifest["slides"]}


def _assert_matches_reference(entry: dict, reference: dict[str, object]) -> None:
    expected = reference[entry["name"]]
    got = read_features(entry["output"])
    assert entry["patches"] == len(expected) == len(got)
    np.testing.assert_array_equal(got.coords, expected.coords)
    np.testing.assert_array_equal(got.features, expected.features)


def _leftovers(folder: Path) -> list[str]:
    """What is in a batch folder besides the feature files and the manifest."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".h5" and p.name != MANIFEST_NAME)


def test_parse_resources() -> None:
    assert parse_resources(["GPU=1", "MEM=2e9,foo=0.5"]) == {"GPU": 1.0, "MEM": 2e9, "foo": 0.5}
    assert parse_resources(None) == {}
    for bad in ("GPU", "GPU=x", "GPU=0", "=1"):
        with pytest.raises(BatchError):
            parse_resources(bad)


def test_a_task_lost_with_its_workers_is_a_failed_entry() -> None:
    from distributed import KilledWorker

    from napari_xmag.batch import _task_record

    class Lost:  # what as_completed hands back for a task whose workers all died
        status = "error"

        def exception(self) -> BaseException:
            return KilledWorker("xmag-embed-a-1", SimpleNamespace(address="tcp://10.0.0.7:4000"), 3)

    record = _task_record(None, Lost())
    assert record["status"] == "failed" and "\n" not in record["reason"]
    assert record["reason"].startswith("KilledWorker: Attempted to run task 'xmag-embed-a-1' on 4 different")
    assert "tcp://10.0.0.7:4000" in record["reason"]


def test_inputs_are_checked_before_any_cluster_starts(tmp_path: Path, data: dict[str, Path]) -> None:
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copyfile(CMU1.path, twin / CMU1.file)  # another file with the same name
    start = time.perf_counter()
    with pytest.raises(BatchError, match="would both be written to"):
        run_batch([CMU1.path, twin / CMU1.file], tmp_path / "out", model=data["model"])
    with pytest.raises(ValueError, match="unknown model"):
        run_batch([CMU1.path], tmp_path / "out", model="no-such-model")
    with pytest.raises(BatchError, match="no such file"):
        run_batch([CMU1.path], tmp_path / "out", model=data["model"], weights=tmp_path / "none.safetensors")
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out").exists()
    assert main(["batch", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "out")]) == 2


# ---- on a cluster -------------------------------------------------------------------------
def test_batch_with_bad_slides_matches_embedding_in_process(
    tmp_path: Path, data: dict[str, Path], reference: dict[str, object], client
) -> None:
    out = tmp_path / "out"
    finished: list[str] = []
    slides = [data["slides"], CMU1.path, BROKEN, UNREADABLE]
    result = run_batch(slides, out, model=data["model"], settings=SETTINGS, client=client,
                       on_slide=lambda entry: finished.append(entry["name"]))

    manifest = read_manifest(out)
    assert manifest == json.loads(json.dumps(result.manifest))  # what is on disk is what was returned
    entries = _by_name(manifest)
    assert sorted(finished) == sorted(entries) and len(entries) == 7
    assert result.counts == {"done": 5, "skipped": 0, "failed": 2} and not result.ok
    assert manifest["counts"] == {"done": 5, "skipped": 0, "failed": 2, "pending": 0}

    broken, unreadable = entries["broken.svs"], entries["unreadable.svs"]
    assert broken["status"] == "failed" and broken["reason"].startswith("SlideOpenError: ")
    assert "not a slide format" in broken["reason"] and "\n" not in broken["reason"]
    assert unreadable["status"] == "failed" and unreadable["reason"].startswith("SlideReadError: ")
    assert "Bogus marker length" in unreadable["reason"]
    assert not Path(broken["output"]).exists() and broken["patches"] is None

    workers = set(client.scheduler_info()["workers"])
    for name in reference:
        entry = entries[name]
        assert entry["status"] == "done" and entry["reason"] is None
        _assert_matches_reference(entry, reference)
        assert entry["output"] == str(out / (Path(name).stem + ".h5"))
        assert entry["worker"] in workers and entry["attempts"] == 1
        assert entry["queued"] <= entry["started"] < entry["finished"]
        assert 0 < entry["seconds"] <= entry["task_seconds"]
        assert 0 < entry["rss_before_mb"] <= entry["rss_peak_mb"] and entry["rss_after_mb"] > 0
    patches = sum(e["patches"] for e in entries.values() if e["patches"])
    assert patches == sum(len(r) for r in reference.values())

    model = create_model(data["model"])
    assert manifest["model"] == "xmag" and manifest["embed_dim"] == model.embed_dim
    # a saved random model is still random (and says so in the manifest)
    assert manifest["weights_sha256"] == model.weights.sha256 and manifest["weights_random"] is True
    assert manifest["weights_source"] == str(data["model"])
    assert {e["weights_sha256"] for e in entries.values()} == {model.weights.sha256}
    assert manifest["settings"]["mpp"] == 2.0 and manifest["settings"]["format"] == "h5"
    assert manifest["options"]["batch_size"] == 4
    assert manifest["started"] < manifest["finished"] and manifest["interrupted"] is False
    assert _leftovers(out) == []


def test_rerun_redoes_only_what_is_missing(tmp_path: Path, data: dict[str, Path], client) -> None:
    out = tmp_path / "out"
    slides = [*sorted(data["slides"].glob("*.svs"))[:3], BROKEN]
    first = run_batch(slides, out, model=data["model"], settings=SETTINGS, client=client)
    assert first.counts == {"done": 3, "skipped": 0, "failed": 1}
    outputs = {e["name"]: Path(e["output"]) for e in first.slides if e["status"] == "done"}
    mtimes = {name: p.stat().st_mtime_ns for name, p in outputs.items()}

    again = run_batch(slides, out, model=data["model"], settings=SETTINGS, client=client)
    entries = _by_name(again.manifest)
    assert again.counts == {"done": 0, "skipped": 3, "failed": 1}
    for name in outputs:
        assert entries[name]["status"] == "skipped" and entries[name]["worker"] is None  # no task at all
        assert entries[name]["patches"] == _by_name(first.manifest)[name]["patches"]
    assert {name: p.stat().st_mtime_ns for name, p in outputs.items()} == mtimes
    broken = entries["broken.svs"]  # failed slides are retried
    assert broken["status"] == "failed"
    assert broken["started"] > _by_name(first.manifest)["broken.svs"]["finished"]

    gone = sorted(outputs)[1]
    features = read_features(outputs[gone]).features
    outputs[gone].unlink()
    third = run_batch(slides, out, model=data["model"], settings=SETTINGS, client=client)
    entries = _by_name(third.manifest)
    assert entries[gone]["status"] == "done" and entries[gone]["worker"] is not None
    assert [entries[n]["status"] for n in sorted(outputs) if n != gone] == ["skipped", "skipped"]
    assert {n: p.stat().st_mtime_ns for n, p in outputs.items() if n != gone} == {
        n: t for n, t in mtimes.items() if n != gone
    }
    np.testing.assert_array_equal(read_features(outputs[gone]).features, features)

    # other settings: the existing files are not skipped, and not replaced without overwrite
    other = EmbedSettings(batch_size=4, device="cpu", tissue_threshold=0.1)
    refused = run_batch(slides[:1], out, model=data["model"], settings=other, client=client)
    assert refused.slides[0]["status"] == "failed"
    assert "made with other settings" in refused.slides[0]["reason"]
    replaced = run_batch(slides[:1], out, model=data["model"], settings=other, client=client, overwrite=True)
    assert replaced.slides[0]["status"] == "done", replaced.slides[0]["reason"]
    assert read_features(replaced.slides[0]["output"]).attrs["tissue_threshold"] == 0.1


def test_a_worker_killed_mid_task_is_retried(
    tmp_path: Path, data: dict[str, Path], reference: dict[str, object]
) -> None:
    import logging

    from distributed import Client, LocalCluster

    out = tmp_path / "out"
    slides = sorted(data["slides"].glob("*.svs"))
    killed: dict[str, object] = {}

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        pids = c.run(os.getpid)
        victim = min(pids)

        def executing(dask_worker) -> list[str]:
            return [str(ts.key) for ts in dask_worker.state.executing]

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                try:
                    keys = c.run(executing, workers=[victim]).get(victim, [])
                except Exception:
                    keys = []
                if keys:  # a task is running there right now (building the model or embedding)
                    killed["keys"] = keys
                    os.kill(pids[victim], signal.SIGKILL)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        result = run_batch(slides, out, model=data["model"], settings=SETTINGS, client=c)
        killer.join()

    assert killed.get("keys"), "the worker was never seen running a task"
    entries = _by_name(result.manifest)
    assert result.ok and result.counts == {"done": 4, "skipped": 0, "failed": 0}
    for key in killed["keys"]:  # the task running on the killed worker ran again on another
        (entry,) = [e for e in entries.values() if str(key).startswith(f"xmag-embed-{Path(e['name']).stem}-")]
        assert entry["attempts"] >= 2 and entry["worker"] != victim
    for entry in entries.values():
        _assert_matches_reference(entry, reference)
    assert read_manifest(out) == json.loads(json.dumps(result.manifest))
    assert _leftovers(out) == []


def test_cli_batch_end_to_end(
    tmp_path: Path, data: dict[str, Path], reference: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "more.txt"
    listing.write_text(f"{CMU1.path}\n{BROKEN}\n")
    out = tmp_path / "out"
    args = ["batch", str(data["slides"]), str(listing), "--out", str(out), "--model", str(data["model"]),
            "--local-workers", "2", "--resources", "GPU=1", "--device", "cpu", "--batch-size", "4",
            "--torch-threads", "1"]  # as the reference, so that the features are equal bit for bit
    assert main(args) == 1  # one slide failed
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 7
    assert sum(" done " in line for line in printed) == 5
    assert any(line.startswith("[") and "failed  broken.svs: SlideOpenError" in line for line in printed)
    assert printed[-1].startswith("6 slides: 5 done, 0 skipped, 1 failed in ")
    manifest = read_manifest(out)
    assert manifest["cluster"]["local_workers"] == 2 and manifest["cluster"]["resources"] == {"GPU": 1.0}
    assert manifest["cluster"]["torch_threads"] == 1
    for entry in manifest["slides"]:
        if entry["name"] != "broken.svs":
            _assert_matches_reference(entry, reference)

    # without the bad slide everything is already done: no cluster starts, exit code 0
    listing.write_text(f"{CMU1.path}\n")
    start = time.perf_counter()
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("5 slides: 0 done, 5 skipped, 0 failed in ")
    assert time.perf_counter() - start < 5


def test_local_cluster_shape_warns_when_oversubscribed(monkeypatch) -> None:
    """The docs once showed --local-workers 4 --torch-threads 4: 16 threads on 2 cores, which
    never finished a slide. The defaults share the cores; more is said, with the way out."""
    monkeypatch.setattr(batch, "available_cores", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert batch.local_cluster_shape(None, None) == (1, 2)
        assert batch.local_cluster_shape(2, None) == (2, 1)
    with pytest.warns(UserWarning, match=r"4 local workers x 4 torch threads = 16 threads on 2 cores.*"
                                         r"--local-workers 4 --torch-threads 1"):
        assert batch.local_cluster_shape(4, 4) == (4, 4)
    monkeypatch.setattr(batch, "available_cores", lambda: 16)
    assert batch.local_cluster_shape(None, None) == (4, 4)
