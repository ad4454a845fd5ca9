"""Query by example (napari_xmag.search): queries, similarity maps, folder search, CSV, CLI."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from feature_sets import feature_set, grid_coords
from napari_xmag import search
from napari_xmag.cli import main
from napari_xmag.features import write_features

# A 4 x 3 grid of 200 px patches without overlap (100 px at 1 µm/px on a 0.5 µm/px scan).
COORDS = grid_coords(np.arange(4) * 200, np.arange(3) * 200)


def slide_file(path, features, **attrs):
    fs = feature_set(COORDS, features, patch=100, stride=100, **attrs)
    fs.coords_attrs["name"] = path.stem
    return write_features(path, fs)


def random_features(seed, dim=8):
    return np.random.default_rng(seed).normal(size=(len(COORDS), dim)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """Three slides of one model; slide b holds slide a's patch 5 (scaled) at its patch 2."""
    root = tmp_path / "features"
    root.mkdir()
    a, b, c = random_features(0), random_features(1), random_features(2)
    b[2] = 3.0 * a[5]
    for name, feats in (("a", a), ("b", b), ("c", c)):
        slide_file(root / f"{name}.h5", feats)
    return root


# ---- queries and one slide ---------------------------------------------------------------------
def test_hand_computed_similarity_on_a_tiny_fixture(tmp_path) -> None:
    feats = np.zeros((len(COORDS), 2), np.float32)
    feats[:, 0] = 1.0  # every patch along x ...
    feats[1] = [1.0, 1.0]  # ... but patch 1 at 45°, patch 2 opposite, patch 3 at 90°
    feats[2] = [-2.0, 0.0]
    feats[3] = [0.0, 5.0]
    path = slide_file(tmp_path / "tiny.h5", feats)
    query = search.query_from_region(path, 250, 50)  # inside patch 1 (200..400, 0..200)
    assert query.source["coords"] == [[200, 0]]
    scores = search.patch_similarity(path, query)
    np.testing.assert_allclose(scores[:4], [np.sqrt(0.5), 1.0, -np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    m = search.similarity_map(path, query)
    assert m.kind == "cosine" and m.metadata["units"] == "cosine"
    assert m.data.shape == (3, 4)  # one cell per patch: no overlap
    assert m.data[0, 1] == pytest.approx(1.0) and m.data[0, 2] == pytest.approx(-np.sqrt(0.5))
    lo, hi = m.metadata["contrast_limits"]
    assert lo == pytest.approx(-np.sqrt(0.5)) and hi == pytest.approx(1.0)
    _, kwargs, kind = m.layer_data()
    assert kind == "image" and kwargs["name"].startswith("similarity · tiny")


def test_a_patch_is_most_like_itself(tmp_path) -> None:
    path = slide_file(tmp_path / "a.h5", random_features(3))
    for i, (x, y) in enumerate(COORDS):
        scores = search.patch_similarity(path, search.query_from_region(path, x + 10, y + 190))
        assert scores[i] == pytest.approx(1.0, abs=1e-6)
        assert int(np.argmax(scores)) == i and scores.max() <= 1.0 + 1e-6


def test_a_rectangle_mean_and_prototypes(tmp_path) -> None:
    feats = random_features(4)
    path = slide_file(tmp_path / "a.h5", feats)
    # centres at (100 + 200 c, 100 + 200 r): this rectangle holds those of patches 0, 1, 4, 5
    mean = search.query_from_region(path, 50, 50, 300, 300)
    assert mean.source["index"] == [0, 1, 4, 5] and mean.vectors.shape == (1, 8)
    unit = feats[[0, 1, 4, 5]] / np.linalg.norm(feats[[0, 1, 4, 5]], axis=1, keepdims=True)
    expected = unit.mean(0) / np.linalg.norm(unit.mean(0))
    np.testing.assert_allclose(mean.vectors[0], expected, atol=1e-6)
    protos = search.query_from_region(path, 50, 50, 300, 300, mode="prototypes")
    scores = search.patch_similarity(path, protos)
    np.testing.assert_allclose(scores[[0, 1, 4, 5]], 1.0, atol=1e-6)  # each patch is its own prototype
    hits = search.slide_hits(path, protos, top=4)
    assert sorted((h.x, h.y) for h in hits) == [(0, 0), (0, 200), (200, 0), (200, 200)]
    # a square in µm centred on a point: 150 µm = 300 px at 0.5 µm/px around (200, 200)
    square = search.query_from_region(path, 200, 200, size_um=150, mode="prototypes")
    assert square.source["index"] == [0, 1, 4, 5]


def test_query_refusals(tmp_path) -> None:
    path = slide_file(tmp_path / "a.h5", random_features(5))
    with pytest.raises(search.SearchError, match=r"a\.h5: no patch under level-0 \(5000, 5000\)"):
        search.query_from_region(path, 5000, 5000)
    with pytest.raises(search.SearchError, match="query mode"):
        search.query_from_region(path, 10, 10, mode="median")


def test_a_query_is_saved_and_loaded(tmp_path) -> None:
    path = slide_file(tmp_path / "a.h5", random_features(6))
    query = search.query_from_region(path, 50, 50, 300, 300, mode="prototypes")
    saved = query.save(tmp_path / "QUERY.json")
    back = search.Query.load(saved)
    np.testing.assert_array_equal(back.vectors, query.vectors)
    assert back.mode == "prototypes" and back.model["model"] == "xmag" and back.model["dim"] == 8
    assert back.source["features"] == str(path) and back.source["slide"] == "a"
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    with pytest.raises(OSError, match="not a napari-xmag search query"):
        query.save(tmp_path / "notes.json")
    with pytest.raises(search.SearchError, match=r"notes\.json: not a napari-xmag query"):
        search.Query.load(tmp_path / "notes.json")


def test_features_of_another_model_are_refused(tmp_path) -> None:
    path = slide_file(tmp_path / "a.h5", random_features(7))
    query = search.query_from_region(path, 10, 10)
    other = slide_file(tmp_path / "other.h5", random_features(8), model="uni2-h")
    with pytest.raises(search.SearchError, match=r"other\.h5: made by another model.*'uni2-h'"):
        search.patch_similarity(other, query)
    wider = slide_file(tmp_path / "wide.h5", random_features(8, dim=16))
    with pytest.raises(search.SearchError, match=r"wide\.h5: features of 16 dimensions"):
        search.similarity_map(wider, query)
    retrained = slide_file(tmp_path / "w.h5", random_features(9), weights_sha256="b" * 64)
    made = slide_file(tmp_path / "v.h5", random_features(9), weights_sha256="a" * 64)
    query = search.query_from_region(made, 10, 10)
    said = r"w\.h5: made by another model than the query \(weights_sha256 'bbbbbbbbbbbb…'"
    with pytest.raises(search.SearchError, match=said):
        search.patch_similarity(retrained, query)


# ---- folders -------------------------------------------------------------------------------
def test_a_slide_searched_against_itself_gives_the_query_patches_first(folder, tmp_path) -> None:
    query = search.query_from_region(folder / "a.h5", 50, 50, 300, 300, mode="prototypes")
    result = search.search_folder(folder / "a.h5", query, top=6, cache_dir=tmp_path / "cache")
    first = {(h.x, h.y) for h in result.hits[:4]}
    assert first == {(0, 0), (200, 0), (0, 200), (200, 200)}
    assert all(h.score == pytest.approx(1.0, abs=1e-6) for h in result.hits[:4])
    assert result.hits[4].score < 1.0 - 1e-3


def test_folder_search_finds_the_copy_on_another_slide(folder, tmp_path) -> None:
    cache = tmp_path / "cache"
    query = search.query_from_region(folder / "a.h5", 250, 250)  # patch 5 of slide a
    result = search.search_folder(folder, query, top=5, cache_dir=cache)
    assert result.files == 3 and result.patches == 36 and result.method == "exact" and result.read == 3
    top2 = sorted((h.slide, h.x, h.y) for h in result.hits[:2])
    assert top2 == [("a", 200, 200), ("b", 400, 0)]  # b's patch 2 is a's patch 5, scaled
    assert all(h.score == pytest.approx(1.0, abs=1e-6) for h in result.hits[:2])
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    # the same patch scored one slide at a time gives the same numbers
    c_scores = search.patch_similarity(folder / "c.h5", query)
    for hit in result.hits:
        if hit.slide == "c":
            i = int(np.flatnonzero((COORDS[:, 0] == hit.x) & (COORDS[:, 1] == hit.y))[0])
            assert hit.score == pytest.approx(float(c_scores[i]), abs=1e-6)
    again = search.search_folder(folder, query, top=5, cache_dir=cache)  # warm: nothing read
    assert again.read == 0 and again.hits == result.hits
    # a changed file is read again, alone; the old cache goes
    slide_file(folder / "c.h5", random_features(12))
    os.utime(folder / "c.h5", ns=(1, 1))
    changed = search.search_folder(folder, query, top=5, cache_dir=cache)
    assert changed.read == 1
    assert len([p for p in cache.iterdir() if p.name.endswith(".pack")]) == 1


def test_exact_and_index_agree_on_the_top_hits(tmp_path) -> None:
    pytest.importorskip("faiss")
    root = tmp_path / "features"
    root.mkdir()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    coords = grid_coords(np.arange(40) * 200, np.arange(25) * 200)
    for i in range(4):
        feats = centres[rng.integers(0, 20, len(coords))] + 0.5 * rng.normal(size=(len(coords), 32))
        fs = feature_set(coords, feats, patch=100, stride=100)
        fs.coords_attrs["name"] = f"s{i}"
        write_features(root / f"s{i}.h5", fs)
    for x in (10, 2010, 4010):
        query = search.query_from_region(root / "s1.h5", x, 10)
        exact = search.search_folder(root, query, top=10, cache_dir=tmp_path / "cache", index="exact")
        approx = search.search_folder(root, query, top=10, cache_dir=tmp_path / "cache", index="faiss")
        assert approx.method.startswith("faiss IVF")
        assert approx.hits[0] == exact.hits[0] and approx.hits[0].score == pytest.approx(1.0, abs=1e-6)
        same = {(h.features, h.x, h.y) for h in exact.hits} & {(h.features, h.x, h.y) for h in approx.hits}
        assert len(same) >= 9
        for hit in approx.hits:  # scores from the index are rescored exactly
            assert hit.score == pytest.approx(search.patch_similarity(hit.features, query)[
                int(np.flatnonzero((coords == (hit.x, hit.y)).all(1))[0])], abs=1e-6)


def test_auto_is_exact_without_faiss(folder, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(search, "_faiss", lambda: None)
    monkeypatch.setattr(search, "INDEX_MIN_VALUES", 1)
    query = search.query_from_region(folder / "a.h5", 250, 250)
    result = search.search_folder(folder, query, top=3, cache_dir=tmp_path / "cache")
    assert result.method == "exact" and result.hits[0].score == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(search.SearchError, match=r"needs faiss: pip install 'napari-xmag\[search\]'"):
        search.search_folder(folder, query, cache_dir=tmp_path / "cache", index="faiss")


def test_an_index_that_would_not_fit_in_memory_is_not_built(folder, tmp_path, monkeypatch) -> None:
    """Faiss's IVF-flat index holds every vector while it is built: past the memory budget it is
    refused when asked for, and auto searches exactly (streaming the memory-mapped cache)."""
    pytest.importorskip("faiss")
    monkeypatch.setattr(search, "INDEX_MIN_VALUES", 1)  # auto would take the index here
    monkeypatch.setattr(search, "too_big", lambda nbytes: f"it would need {nbytes:.0f} bytes")
    query = search.query_from_region(folder / "a.h5", 250, 250)
    with pytest.raises(search.SearchError, match="cannot build the faiss index: it would need"):
        search.search_folder(folder, query, cache_dir=tmp_path / "cache", index="faiss")
    assert search.search_folder(folder, query, cache_dir=tmp_path / "cache").method == "exact"


def test_folder_refusals(folder, tmp_path) -> None:
    query = search.query_from_region(folder / "a.h5", 250, 250)
    with pytest.raises(search.SearchError, match="nowhere: no such folder"):
        search.search_folder(tmp_path / "nowhere", query)
    (tmp_path / "empty").mkdir()
    with pytest.raises(search.SearchError, match="empty: holds no features files"):
        search.search_folder(tmp_path / "empty", query)
    slide_file(folder / "z-other.h5", random_features(3), model="uni2-h")
    cache = tmp_path / "cache"
    with pytest.raises(search.SearchError, match=r"z-other\.h5: made by another model"):
        search.search_folder(folder, query, cache_dir=cache)
    assert not cache.exists()  # said before anything was cached


# ---- the CSV and the CLI ---------------------------------------------------------------------
def test_csv_is_written_and_a_foreign_file_kept(folder, tmp_path) -> None:
    query = search.query_from_region(folder / "a.h5", 250, 250)
    hits = search.search_folder(folder, query, top=3, cache_dir=tmp_path / "cache").hits
    out = search.write_hits_csv(tmp_path / "hits.csv", hits)
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and float(rows[0]["score"]) == pytest.approx(1.0)
    search.write_hits_csv(out, hits[:1])  # ours: replaced
    assert len(list(csv.DictReader(out.open()))) == 1
    mine = tmp_path / "mine.csv"
    mine.write_text("a,b\n1,2\n")
    with pytest.raises(OSError, match="not a napari-xmag search results CSV"):
        search.write_hits_csv(mine, hits)
    assert mine.read_text() == "a,b\n1,2\n"
    search.write_hits_csv(mine, hits, overwrite=True)
    assert mine.read_text().startswith("rank,slide,x,y,score")


def test_cli_search(folder, tmp_path, monkeypatch, capsys, xmag_cache) -> None:
    monkeypatch.chdir(tmp_path)
    # the slide's features are found in the folder by its name; a 150 µm square around patch 5
    argv = ["search", "--slide", "slides/a.svs", "--x", "300", "--y", "300", "--size", "150", str(folder),
            "--top", "4", "--save-query", "q.json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rank  slide" in out and "-> search-a-300-300.csv" in out
    rows = list(csv.DictReader((tmp_path / "search-a-300-300.csv").open()))
    assert {(r["slide"], r["x"], r["y"]) for r in rows[:2]} == {("a", "200", "200"), ("b", "400", "0")}
    assert main(["search", "q.json", str(folder), "--top", "2", "--out", "again.csv"]) == 0
    again = list(csv.DictReader((tmp_path / "again.csv").open()))
    assert [(r["slide"], r["x"], r["y"]) for r in again] == [(r["slide"], r["x"], r["y"]) for r in rows[:2]]
    (tmp_path / "mine.csv").write_text("keep me\n")
    capsys.readouterr()
    assert main(["search", "q.json", str(folder), "--out", "mine.csv"]) == 2
    err = capsys.readouterr().err
    assert "mine.csv: exists and is not a napari-xmag search results CSV" in err and err.endswith("\n")
    assert (tmp_path / "mine.csv").read_text() == "keep me\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["search", "q.json", "nowhere"], "nowhere: no such folder of features files"),
    (["search", "--slide", "x.svs", "--x", "1", "--y", "1", "FOLDER"], "x.svs: no features of it in"),
    (["search", "FOLDER"], "give a QUERY.json, or --slide S --x X --y Y"),
    (["search", "missing.json", "FOLDER"], "missing.json: no such query file"),
    (["search", "--slide", "FOLDER/a.h5", "--x", "1", "--y", "1", "--top", "0", "FOLDER"],
     "top 0: at least 1"),
])
def test_cli_says_what_is_wrong(folder, tmp_path, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("FOLDER", str(folder)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmag search: error: ") and message in err and err.count("\n") == 1


def test_cli_refuses_another_models_folder(folder, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    slide_file(folder / "other.h5", random_features(9), model="uni2-h")
    cache = tmp_path / "cache"
    argv = ["search", "--slide", str(folder / "a.h5"), "--x", "10", "--y", "10", str(folder), "--cache",
            str(cache)]
    assert main(argv) == 2
    assert "other.h5: made by another model" in capsys.readouterr().err
    assert not cache.exists() and not list(tmp_path.glob("*.csv"))
