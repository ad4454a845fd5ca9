"""Probes, ABMIL and end-to-end fine-tuning: learn a planted signal, not noise; files; errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_xmag.cli import main
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features
from napari_xmag.mil import (
    ABMIL,
    ABMILSettings,
    MILError,
    classification_metrics,
    cross_validate_abmil,
    linear_probe,
    load_abmil,
    read_attention,
    read_labels,
    save_abmil,
    slide_stem,
    summarise,
)
from napari_xmag.mil.student import activation_bytes_estimate, measure_step_memory
from napari_xmag.models import create_model, save_model
from napari_xmag.synthetic import write_aperio_pyramid

PINK, PURPLE = (236, 150, 190), (120, 60, 160)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These models are tiny: on a shared 2-core machine, two torch threads spin-waiting on
    each other make a step 10-100x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- synthetic data -------------------------------------------------------------------------
def feature_bags(n: int = 40, dim: int = 32, strength: float = 5.0, seed: int = 0, signal: bool = True):
    """Bags of 20-50 Gaussian patches; in class-1 bags 1-3 patches are shifted along one
    direction (a colour or texture no other patch has). Without ``signal`` the labels are
    shuffled, so they are independent of the features."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    y = np.arange(n) % 2
    bags, marked = [], []
    for label in y:
        size = int(rng.integers(20, 50))
        bag = rng.standard_normal((size, dim)).astype(np.float32)
        hit = np.zeros(size, bool)
        if label:
            hit[rng.choice(size, int(rng.integers(1, 4)), replace=False)] = True
            bag[hit] += strength * direction.astype(np.float32)
        bags.append(bag)
        marked.append(hit)
    return bags, (y if signal else rng.permutation(y)), marked


def colour_slide(path: Path, colour: tuple[int, int, int], seed: int, size: int = 1344) -> Path:
    """A 0.5 µm/px Aperio slide: glass around a square of one stain colour, with noise."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 245, np.float32)
    margin = size // 16
    image[margin:-margin, margin:-margin] = colour
    image += rng.normal(0, 12, (size, size, 1)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    levels = {1: image, 4: image[::4, ::4]}
    return write_aperio_pyramid(path, size, size, lambda ds, y, x, h, w: levels[ds][y : y + h, x : x + w],
                                downsamples=(1, 4), mpp=0.5, app_mag=20)


def tiny_student(**kwargs):
    """The tiny random XMAG student with LayerScale starting at 1: DINOv2's 1e-5 leaves random
    blocks near identity, so its class token would hardly see the pixels (differences of
    1e-6), and only the probe's standardisation would find the colour in float noise."""
    return create_model("xmag", weights="random", tiny=True, overrides={"init_values": 1.0}, **kwargs)


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory) -> Path:
    """Six slides (pink, purple alternately) embedded at 0.5 µm/px by a tiny random student,
    a slide-label CSV (label = colour) and a patch-label CSV with random labels."""
    root = tmp_path_factory.mktemp("colour")
    model = tiny_student()
    rng = np.random.default_rng(0)
    slides, patches = ["slide,label"], ["slide,x,y,label"]
    for i in range(6):
        name = "pink" if i % 2 == 0 else "purple"
        path = colour_slide(root / f"s{i}.svs", PINK if i % 2 == 0 else PURPLE, seed=i)
        done = embed_slide(path, model, root / "features", EmbedSettings(mpp=0.5, batch_size=64, workers=1),
                           progress=False)
        slides.append(f"{path.name},{name}")
        for x, y in read_features(done.output).coords:
            patches.append(f"s{i},{x},{y},{rng.choice(['a', 'b'])}")
    (root / "slides.csv").write_text("\n".join(slides) + "\n")
    (root / "random_patches.csv").write_text("\n".join(patches) + "\n")
    return root


# ---- metrics and labels -----------------------------------------------------------------------
def test_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, prob)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.75
    assert m["auc"] == 1.0  # every positive scores above every negative
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # three classes: one-vs-rest macro AUC; a fold holding one class has no AUC
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])
    from sklearn.metrics import roc_auc_score

    assert classification_metrics(y3, p3)["auc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert np.isnan(classification_metrics(np.array([1, 1]), prob[:2])["auc"])
    summary = summarise([{"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "auc": 0.4},
                         {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0, "auc": float("nan")}])
    assert summary["accuracy"] == {"mean": 0.75, "std": 0.25}
    assert summary["auc"] == {"mean": 0.4, "std": 0.0}  # NaN folds are skipped


def test_label_files(tmp_path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text("slide_id,label\nTCGA-A1.0C4B-9D3C,10\ndir/b.svs,2\nc.ndpi,2\n")
    table = read_labels(csv)
    assert table.kind == "slide" and table.stems == ["TCGA-A1.0C4B-9D3C", "b", "c"]
    assert table.classes == ["2", "10"] and table.y.tolist() == [1, 0, 0]  # numeric order
    assert slide_stem("x/TCGA-1.2.svs") == "TCGA-1.2"
    csv.write_text("slide,x,y,label\na,0,0,t\na,896,0,n\n")
    table = read_labels(csv)
    assert table.kind == "patch" and table.xy.tolist() == [[0, 0], [896, 0]]
    csv.write_text("slide,label\na,t\na,n\n")
    with pytest.raises(MILError, match="listed 2 times"):
        read_labels(csv)
    csv.write_text("name,class\na,t\n")
    with pytest.raises(MILError, match="needs a 'slide' and a 'label' column"):
        read_labels(csv)


def test_bags_from_two_models_are_refused(tmp_path) -> None:
    from napari_xmag.features import FeatureSet, write_features
    from napari_xmag.mil import load_bags

    for name, dim in (("a", 8), ("b", 16)):
        bag = FeatureSet(np.zeros((2, 2)), np.zeros((2, dim)), {"model": "m"})
        write_features(tmp_path / f"{name}.h5", bag)
    (tmp_path / "l.csv").write_text("slide,label\na,x\nb,y\n")
    with pytest.raises(MILError, match="embed all slides with one model"):
        load_bags(read_labels(tmp_path / "l.csv"), tmp_path)


# ---- the probe ---------------------------------------------------------------------------------
def test_probe_learns_a_direction_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(32)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, 600)
    x = rng.standard_normal((600, 32)) + 1.5 * np.outer(2 * y - 1, direction)
    signal = linear_probe(x, y, folds=5, seed=0)
    assert signal.summary["balanced_accuracy"]["mean"] >= 0.85
    assert signal.summary["auc"]["mean"] >= 0.9
    assert len(signal.folds) == 5 and signal.split == "sample"
    again = linear_probe(x, y, folds=5, seed=0)
    assert again.folds == signal.folds  # fixed seed, same folds, same numbers
    noise = linear_probe(x, rng.permutation(y), folds=5, seed=0)
    assert abs(noise.summary["balanced_accuracy"]["mean"] - 0.5) <= 0.1
    assert abs(noise.summary["auc"]["mean"] - 0.5) <= 0.1


# ---- ABMIL -------------------------------------------------------------------------------------
def test_gated_attention_by_hand_and_save_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = ABMIL(8, hidden=6, attn_dim=4, n_classes=3, dropout=0.0).eval()
    model.set_input_norm(np.random.default_rng(0).normal(2.0, 3.0, (50, 8)))
    bag = torch.randn(5, 8)
    logits, scores = model(bag)
    h = torch.relu(model.embed[0]((bag - model.input_mean) / model.input_std))
    a = model.attention_w(torch.tanh(model.attention_v(h)) * torch.sigmoid(model.attention_u(h)))[:, 0]
    torch.testing.assert_close(scores, a)
    torch.testing.assert_close(logits, model.classifier(torch.softmax(a, 0) @ h))
    loaded, classes = load_abmil(save_abmil(model, tmp_path / "head.safetensors", ["a", "b", "c"]))
    assert classes == ["a", "b", "c"]
    torch.testing.assert_close(loaded(bag)[0], logits)  # the input standardisation travels with it


def test_abmil_finds_the_few_signal_patches_and_not_noise() -> None:
    settings = ABMILSettings(epochs=10, lr=1e-3)
    bags, y, marked = feature_bags(signal=True)
    result = cross_validate_abmil(bags, y, ["neg", "pos"], folds=4, seed=0, settings=settings)
    assert result.summary["balanced_accuracy"]["mean"] >= 0.85
    assert result.summary["auc"]["mean"] >= 0.9
    # held-out attention: on the 1-3 marked patches of a positive bag, far above the others
    on = np.mean([result.attention[i][0][marked[i]].mean() for i in range(len(bags)) if marked[i].any()])
    off = np.mean([result.attention[i][0][~marked[i]].mean() for i in range(len(bags)) if marked[i].any()])
    assert on > 10 * off
    for weights, _ in result.attention:
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    bags, y, _ = feature_bags(signal=False, n=60, seed=2)
    noise = cross_validate_abmil(bags, y, ["neg", "pos"], folds=4, seed=0, settings=settings)
    assert abs(noise.summary["balanced_accuracy"]["mean"] - 0.5) <= 0.2
    assert abs(noise.summary["auc"]["mean"] - 0.5) <= 0.2


# ---- xmag eval on slides -------------------------------------------------------------------------
def test_eval_learns_colour_from_slides(colour_set, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    rc = main(["eval", "--csv", str(colour_set / "slides.csv"), "--features", str(colour_set / "features"),
               "--out", str(out), "--folds", "3", "--lr", "1e-3", "--epochs", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "probe: accuracy" in printed and "abmil: accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["pink", "purple"] and report["slides"] == 6
    probe, abmil = report["probe"], report["abmil"]
    assert probe["split"] == "slide"  # no slide in both train and test
    assert probe["summary"]["balanced_accuracy"]["mean"] >= 0.85 and probe["summary"]["auc"]["mean"] >= 0.9
    assert probe["slide_level"]["balanced_accuracy"] == 1.0
    assert abmil["summary"]["balanced_accuracy"]["mean"] >= 0.85
    assert sorted(p["fold"] for p in abmil["predictions"]) == [0, 0, 1, 1, 2, 2]
    for k in range(3):
        assert load_abmil(out / "abmil" / f"fold{k}.safetensors")[1] == ["pink", "purple"]
    # attention: one file per slide, the features file's patches, from the fold that held it out
    for prediction in abmil["predictions"]:
        att = read_attention(out / "attention" / f"{prediction['slide']}.h5")
        feats = read_features(colour_set / "features" / f"{prediction['slide']}.h5")
        np.testing.assert_array_equal(att.coords, feats.coords)
        assert att.attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert att.attrs["fold"] == prediction["fold"] and att.attrs["method"] == "abmil"
        assert att.attrs["classes"] == ["pink", "purple"] and att.attrs["label"] == prediction["label"]
        assert att.coords_attrs["patch_size_level0"] == feats.coords_attrs["patch_size_level0"]
        assert att.percentiles().max() == 1.0


def test_eval_cannot_learn_random_patch_labels(colour_set, tmp_path, capsys) -> None:
    out = tmp_path / "noise"
    rc = main(["eval", "--csv", str(colour_set / "random_patches.csv"), "--features",
               str(colour_set / "features"), "--out", str(out), "--folds", "3"])
    assert rc == 0
    assert "note: ABMIL skipped" in capsys.readouterr().out
    probe = json.loads((out / "report.json").read_text())["probe"]
    assert probe["n_samples"] == 6 * 36
    assert abs(probe["summary"]["balanced_accuracy"]["mean"] - 0.5) <= 0.15
    assert abs(probe["summary"]["auc"]["mean"] - 0.5) <= 0.15


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such labels file"),
        ("no-features", "1 slide(s) without a features file"),
        ("one-class", "one class only"),
        ("few-slides", "fewer than the 5 folds"),
        ("abmil-on-patches", "ABMIL needs one label per slide"),
        ("unknown-patch", "not in its features file"),
    ],
)
def test_eval_errors_are_one_line(case, message, colour_set, tmp_path, capsys) -> None:
    csv = tmp_path / "labels.csv"
    rows = {
        "no-features": "slide,label\ns0,pink\ns1,purple\ns2,pink\ns3,purple\nghost,pink\ns5,purple\n",
        "one-class": "slide,label\ns0,pink\ns2,pink\n",
        "few-slides": "slide,label\ns0,pink\ns1,purple\ns2,pink\ns3,purple\n",
        "abmil-on-patches": "slide,x,y,label\ns0,0,0,a\ns1,0,0,b\n",
        "unknown-patch": "slide,x,y,label\ns0,1,2,a\ns1,0,0,b\n",
    }
    if case in rows:
        csv.write_text(rows[case])
    folds = "3" if case == "no-features" else "5"
    method = "abmil" if case == "abmil-on-patches" else "both"
    rc = main(["eval", "--csv", str(csv), "--features", str(colour_set / "features"), "--out",
               str(tmp_path / "out"), "--folds", folds, "--method", method])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("xmag eval: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "report.json").exists()


# ---- end to end ---------------------------------------------------------------------------------
def test_finetune_end_to_end(colour_set, tmp_path, capsys, monkeypatch) -> None:
    """Tiny student and teacher, 4 slides, 2 folds, 1 epoch: 4 steps of 3 patches each."""
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    csv = tmp_path / "labels.csv"
    rows = [f"{colour_set / f's{i}.svs'},{'pink' if i % 2 == 0 else 'purple'}" for i in range(4)]
    csv.write_text("\n".join(["slide,label", *rows]) + "\n")  # slides as absolute paths
    original = tiny_student(heads=True)
    save_model(original, tmp_path / "student")
    out = tmp_path / "ft"
    args = ["finetune", "--csv", str(csv), "--out", str(out), "--student", str(tmp_path / "student"),
            "--teacher-weights", "random", "--blocks", "1", "--epochs", "1", "--max-patches", "2",
            "--folds", "2", "--workers", "1", "--device", "cpu"]
    assert main([*args, "--lambda", "1.0"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS (teacher)" in captured.err and "4 slides, 2 folds" in captured.out
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert len(steps) == 4 and all(s["patches"] == 2 for s in steps)
    for s in steps:  # every term finite, the distillation term included
        assert all(np.isfinite([s["loss"], s["ce"], s["distill"]]))
        assert s["loss"] == pytest.approx(s["ce"] + 1.0 * s["distill"], abs=1e-5)
        assert s["distill"] != 0.0
    assert len(list((out / "teacher_cache").glob("*.zarr"))) == 4  # the one teacher-target cache
    # the saved student loads; only the last block (and norm, heads) moved
    tuned = create_model(out / "fold0" / "student")
    before, after = original.state_dict(), tuned.state_dict()
    frozen, trained = "backbone.blocks.0.attn.qkv.weight", "backbone.blocks.1.attn.qkv.weight"
    assert torch.equal(before[frozen], after[frozen])
    assert not torch.equal(before[trained], after[trained])
    assert tuned.heads is not None
    assert load_abmil(out / "fold1" / "abmil.safetensors")[1] == ["pink", "purple"]
    for i in range(4):
        att = read_attention(out / "attention" / f"s{i}.h5")
        assert att.attrs["method"] == "finetune" and att.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert report["memory"]["activation_bytes_estimate"] > 0
    # the same run without the teacher: same cross-entropy at the first step, another total
    assert main([*args, "--lambda", "1.0"]) == 2  # a finished run is not overwritten
    assert "holds a finished run" in capsys.readouterr().err
    # (with gradient checkpointing, which recomputes the same values and still trains the block)
    assert main([*args, "--lambda", "0", "--checkpointing", "--out", str(tmp_path / "ce")]) == 0
    plain = json.loads((tmp_path / "ce" / "report.json").read_text())["steps"]
    assert plain[0]["ce"] == pytest.approx(steps[0]["ce"], abs=1e-6)
    assert plain[0]["distill"] == 0.0 and plain[0]["loss"] != pytest.approx(steps[0]["loss"], abs=1e-6)
    assert not (tmp_path / "ce" / "teacher_cache").exists()
    moved = create_model(tmp_path / "ce" / "fold0" / "student").state_dict()
    assert not torch.equal(before[trained], moved[trained])


def test_finetune_errors(colour_set, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XMAG_MODELS", "tiny-random")
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,label\ns0,pink\ns1,purple\nnowhere,pink\ns3,purple\n")
    rc = main(["finetune", "--csv", str(csv), "--slides", str(colour_set), "--out", str(tmp_path / "o"),
               "--folds", "2", "--student-weights", "random", "--teacher-weights", "random"])
    err = capsys.readouterr().err
    assert rc == 2 and "1 slide(s) not found" in err and "nowhere" in err and err.count("\n") == 1


def test_activation_memory_estimate_matches_what_autograd_keeps() -> None:
    student = create_model("xmag", weights="random", tiny=True)
    measured = measure_step_memory(student, 3, 1)
    estimate = activation_bytes_estimate(3, 1, tokens=257, width=32)
    assert measured["saved_bytes"] == pytest.approx(estimate, rel=0.02)
    checkpointed = measure_step_memory(student, 3, 1, checkpointing=True)
    assert checkpointed["saved_bytes"] < measured["saved_bytes"] / 4
