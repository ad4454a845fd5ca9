"""Lose nothing, run nothing, exhaust nothing: every attack and loss of issue 10, tried for real.

Each test puts a user's files (hashed) or an attacker's file on a throw-away folder, runs what a
user would run, and checks that the command refused with one line naming the path and the
cause, that the user's files are byte-identical afterwards, and that no code marker appeared.
The numbers in the names follow the issue's items; items whose home is one module (atomic
outputs, the manifest, HDF5 and Zarr inputs, the memory budget, paths, slide forensics) are
tested beside it (tests/test_atomic.py, tests/formats/, ...).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from cases import CMU1
from feature_sets import features_file
from hazards import Payload, one_line_refusal, run_cli, tree_hash, user_folder
from napari_xmag import _writer, maps
from napari_xmag._atomic import OutputExistsError
from napari_xmag.cli import main
from napari_xmag.features import read_features, write_features
from napari_xmag.maps import MapError


# ---- 1. maps and the napari writer never replace what is not theirs ----------------------------
@pytest.mark.parametrize("what", ["folder", "slide", "input"])
def test_1_maps_out_refuses_what_it_did_not_write(tmp_path: Path, what: str) -> None:
    features = features_file(tmp_path / "case.h5")
    if what == "folder":
        out = user_folder(tmp_path / "thesis")
    elif what == "slide":
        out = tmp_path / "copy-of-CMU-1.svs"
        shutil.copy(CMU1.path, out)
    else:
        out = features
    before = {**tree_hash(out), **tree_hash(features)}
    proc = run_cli("maps", str(features), "--kind", "pca", "--out", str(out))
    one_line_refusal(proc, str(out))
    assert ("is the input" if what == "input" else "is not a napari-xmag map store") in proc.stderr
    assert {**tree_hash(out), **tree_hash(features)} == before
    assert not list(tmp_path.glob(".*.part"))


def test_1_maps_out_replaces_its_own_map_and_a_foreign_one_with_overwrite(tmp_path: Path) -> None:
    features = features_file(tmp_path / "case.h5")
    out = tmp_path / "case.pca.ome.zarr"
    assert main([ "maps", str(features), "--kind", "pca", "--out", str(out)]) == 0
    assert main(["maps", str(features), "--kind", "kmeans", "--out", str(out)]) == 0  # ours: replaced
    folder = user_folder(tmp_path / "mine")
    assert main(["maps", str(features), "--kind", "pca", "--out", str(folder), "--overwrite"]) == 0
    assert not (folder / "thesis.docx").exists() and (folder / ".zattrs").exists()


def test_1_napari_writer_asks_before_replacing_a_folder(tmp_path: Path, monkeypatch) -> None:
    from napari_xmag._widgets import _common

    m = maps.pca_map(read_features(features_file(tmp_path / "case.h5")))
    data, attributes, _ = m.layer_data()
    folder = user_folder(tmp_path / "thesis.ome.zarr")
    before = tree_hash(folder)
    asked: list[str] = []
    monkeypatch.setattr(_common, "confirm_replace", lambda path, reason: asked.append(reason) or False)
    with pytest.warns(_writer.XmagWriterWarning, match="not a napari-xmag map store"):
        assert _writer.write_image_zarr(str(folder), data, attributes) == []
    assert tree_hash(folder) == before and asked and "a folder holding 1 file and 1 folder" in asked[0]
    monkeypatch.setattr(_common, "confirm_replace", lambda path, reason: True)  # the user said yes
    assert _writer.write_image_zarr(str(folder), data, attributes) == [str(folder)]
    assert not (folder / "thesis.docx").exists()


# ---- 2. distill, compare, batch and eval look before they write -------------------------------
def test_2_distill_refuses_a_folder_with_foreign_run_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    user_folder(out / "student")
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "log.csv").write_text("date,weight\n2026-01-01,70\n")
    (out / "notes.txt").write_text("not a run file: never looked at")
    before = tree_hash(out)
    proc = run_cli("distill", str(CMU1.path), "--out", str(out), "--steps", "1")
    one_line_refusal(proc, str(out / "config.json"), "is not a napari-xmag training configuration")
    assert tree_hash(out) == before


def test_2_distill_refuses_an_earlier_run_of_its_own_without_overwrite(tmp_path: Path) -> None:
    from napari_xmag.distill import TrainConfig, train
    from napari_xmag.distill.trainer import TrainError

    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(slides=[str(CMU1.path)], out_dir=out, steps=1)
    (out / "config.json").write_text(json.dumps({"format": "napari-xmag-distill-config", **config.to_dict()}))
    before = tree_hash(out)
    with pytest.raises(TrainError, match=r"holds an earlier run \(config.json\).*--overwrite"):
        train(config)
    assert tree_hash(out) == before


def test_2_compare_refuses_foreign_report_and_arrays(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "report.json").write_text('{"quarterly": "report"}')
    user_folder(out / "compare.h5")
    before = tree_hash(out)
    proc = run_cli("compare", str(CMU1.path), "--out", str(out), "--student-weights", "random",
                   "--teacher-weights", "random")
    one_line_refusal(proc, str(out / "report.json"), "is not a napari-xmag comparison report")
    assert tree_hash(out) == before
    (out / "report.json").unlink()
    before = tree_hash(out)
    proc = run_cli("compare", str(CMU1.path), "--out", str(out))
    one_line_refusal(proc, str(out / "compare.h5"), "a folder holding")
    assert tree_hash(out) == before


def test_2_batch_refuses_a_users_manifest(tmp_path: Path) -> None:
    from napari_xmag.batch import run_batch

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"shipping": "manifest"}')
    before = tree_hash(out)
    refusal = r"manifest.json: exists and is not a napari-xmag batch manifest"
    with pytest.raises(OutputExistsError, match=refusal):
        run_batch([CMU1.path], out, weights="random")
    assert tree_hash(out) == before


def test_2_eval_refuses_foreign_outputs_before_any_work(tmp_path: Path) -> None:
    from napari_xmag.mil import run_eval

    feats = tmp_path / "features"
    for i in range(4):
        features_file(feats / f"s{i}.h5")
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(4)))
    out = tmp_path / "eval"
    (out / "attention").mkdir(parents=True)
    (out / "attention" / "s1.h5").write_bytes(b"someone's h5")
    before = tree_hash(out)
    refusal = r"attention/s1.h5: exists and is not a napari-xmag attention file"
    with pytest.raises(OutputExistsError, match=refusal):
        run_eval(csv, feats, out, method="abmil", folds=2)
    assert tree_hash(out) == before
    (out / "report.json").write_text("{}")
    before = tree_hash(out)
    with pytest.raises(OutputExistsError, match=r"report.json: exists and is not a napari-xmag evaluation"):
        run_eval(csv, feats, out, method="probe", folds=2)
    assert tree_hash(out) == before


# ---- 5. two slides never share an output ------------------------------------------------------
def test_5_slides_of_one_name_never_share_features(tmp_path: Path, pyramid_path: Path) -> None:
    (tmp_path / "dupA").mkdir(), (tmp_path / "dupB").mkdir()
    a, b = tmp_path / "dupA" / "slide.svs", tmp_path / "dupB" / "slide.tiff"
    shutil.copy(CMU1.path, a)
    shutil.copy(pyramid_path, b)
    out = tmp_path / "o"
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model

    proc = run_cli("embed", str(a), str(b), "--out", str(out), "--weights", "random")
    one_line_refusal(proc, "would both be written to", str(out / "slide.h5"))
    assert not out.exists()

    model = create_model("xmag", weights="random", tiny=True)
    settings = EmbedSettings(device="cpu", batch_size=16)
    first = embed_slide(a, model, out, settings, progress=False)
    before = tree_hash(first.output)
    with pytest.raises(OutputExistsError, match=r"holds the features of another slide .*dupA/slide.svs"):
        embed_slide(b, model, out, settings, progress=False)
    assert tree_hash(first.output) == before
    moved = tmp_path / "moved" / "slide.svs"  # the same bytes elsewhere are the same slide
    moved.parent.mkdir()
    shutil.copy(a, moved)
    assert embed_slide(moved, model, out, settings, progress=False).skipped


# ---- 6. probes: a pickle never runs unless trusted --------------------------------------------
def test_6_a_pickled_probe_does_not_run(tmp_path: Path) -> None:
    features = features_file(tmp_path / "case.h5")
    marker = tmp_path / "PWNED"
    evil = tmp_path / "probe.pkl"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    shutil.copy(evil, tmp_path / "probe.joblib")
    for probe in (evil, tmp_path / "probe.joblib"):
        proc = run_cli("maps", str(features), "--kind", "probe", "--probe", str(probe),
                       "--out", str(tmp_path / "p.ome.zarr"))
        one_line_refusal(proc, str(probe), "refused", "pickle", "--trust-pickle")
    assert not marker.exists() and not (tmp_path / "p.ome.zarr").exists()


def test_6_skops_probes_load_and_untrusted_types_are_refused(tmp_path: Path) -> None:
    import joblib
    import skops.io
    from sklearn.linear_model import LogisticRegression

    data = read_features(features_file(tmp_path / "case.h5"))
    y = (data.features[:, 0] > 0).astype(int)
    clf = LogisticRegression().fit(data.features, y)
    skops.io.dump(clf, tmp_path / "probe.skops")
    loaded = maps.load_probe(tmp_path / "probe.skops")
    np.testing.assert_allclose(loaded.predict_proba(data.features), clf.predict_proba(data.features))
    joblib.dump(clf, tmp_path / "mine.joblib")  # the user's own pickle, trusted explicitly
    trusted = maps.load_probe(tmp_path / "mine.joblib", trust_pickle=True)
    np.testing.assert_allclose(trusted.predict_proba(data.features), clf.predict_proba(data.features))
    bad = tmp_path / "bad.skops"
    _skops_with_type(tmp_path / "probe.skops", bad, "posix.system")
    with pytest.raises(MapError, match=r"refused: it names types skops does not trust \(posix.system\)"):
        maps.load_probe(bad)


def _skops_with_type(good: Path, bad: Path, qualname: str) -> None:
    """A copy of a skops file whose estimator claims to be ``qualname``."""
    import zipfile

    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == "schema.json":
                schema = json.loads(content)
                module, _, name = qualname.rpartition(".")
                schema["__module__"], schema["__class__"] = module, name
                content = json.dumps(schema).encode()
            dst.writestr(item, content)


# ---- 7. model overrides: shape only, never a file timm would load -----------------------------
def test_7_a_config_json_cannot_make_timm_load_a_file(tmp_path: Path) -> None:
    from napari_xmag.models import create_model, save_model

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    import torch

    torch.save({"state_dict": Payload(marker)}, evil)
    folder = save_model(create_model("xmag", weights="random", tiny=True), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["overrides"] = {"checkpoint_path": str(evil)}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"refused checkpoint_path: only the architecture's shape"):
        create_model(folder)
    from napari_xmag.distill import TrainConfig

    with pytest.raises(ValueError, match="teacher_overrides: refused pretrained_cfg_overlay"):
        TrainConfig(slides=[str(CMU1.path)], out_dir=tmp_path / "run", steps=1, teacher_weights="random",
                    teacher_overrides={"pretrained_cfg_overlay": {"file": str(evil)}})
    assert not marker.exists()


def test_7_the_timm_floor_loads_weights_only() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"timm>=1.0.26"' in text  # 1.0.26 is the first whose load_checkpoint is weights_only=True


# ---- 8. a checkpoint carrying code: one line, without the advice to unpickle it ---------------
def test_8_resume_with_a_code_carrying_checkpoint_is_one_line(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"format": "napari-xmag-train-checkpoint", "rng": Payload(marker)}, out / "checkpoint.pt")
    proc = run_cli("distill", str(CMU1.path), "--out", str(out), "--steps", "1", "--resume")
    one_line_refusal(proc, str(out / "checkpoint.pt"), "refused to read", "could run code")
    assert "weights_only=False" not in proc.stderr and "set to `False`" not in proc.stderr
    assert not marker.exists()


def test_10_memory_error_is_one_line(monkeypatch, capsys) -> None:
    from napari_xmag import cli

    def boom(args):
        raise MemoryError

    monkeypatch.setattr(cli, "_cmd_info", boom)
    assert cli.main(["info", str(CMU1.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmag info: error: out of memory") and "Traceback" not in err


# ---- 13. exported models are readable by colleagues -------------------------------------------
def test_13_saved_models_honour_the_umask(tmp_path: Path) -> None:
    from napari_xmag.models import create_model, save_model

    old = os.umask(0o022)
    try:
        folder = save_model(create_model("xmag", weights="random", tiny=True), tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


# ---- the writers' one rule, for every kind --------------------------------------------------------
def test_every_writer_refuses_a_foreign_target(tmp_path: Path) -> None:
    """Each writer, pointed at a user's file: refused, the file unchanged."""
    from napari_xmag.distill.checkpoint import save_checkpoint
    from napari_xmag.formats.attention import AttentionMap
    from napari_xmag.maps import write_geojson, write_ome_zarr
    from napari_xmag.mil import write_attention

    data = read_features(features_file(tmp_path / "case.h5"))
    km = maps.kmeans_map(data, 3)
    writers = {
        "features.h5": lambda p: write_features(p, data),
        "map.ome.zarr": lambda p: write_ome_zarr(p, km),
        "map.geojson": lambda p: write_geojson(p, km),
        "probe.npz": lambda p: maps.save_probe(maps.LinearProbe(np.zeros((1, 16)), [0.0], ["a", "b"]), p),
        "attention.h5": lambda p: write_attention(
            p, AttentionMap(data.coords, np.ones(36) / 36, np.zeros(36))
        ),
        "checkpoint.pt": lambda p: save_checkpoint(p, {"format": "napari-xmag-train-checkpoint"}),
    }
    for name, write in writers.items():
        target = tmp_path / "user" / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"the user's own " + name.encode())
        before = tree_hash(target)
        with pytest.raises(OutputExistsError, match=f"{name}: exists and is not a napari-xmag"):
            write(target)
        assert tree_hash(target) == before, name
        target.unlink()
        write(target)  # nothing there: written
        write(target)  # ours now: replaced
    assert not list((tmp_path / "user").glob(".*"))
