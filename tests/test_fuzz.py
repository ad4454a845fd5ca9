"""Fuzzing the readers: whatever bytes, JSON or HDF5 content a file holds, a reader returns
something sane or raises its one documented error naming the file, never a KeyError, an
IndexError, a TypeError or a crash.

* slides: the napari probe (:func:`get_reader`) never raises; the reader (:func:`read_slides`)
  and the store (:class:`Slide`) raise only :class:`SlideError` with the path in the message;
* features files (h5 and zarr): :func:`read_features` raises only :class:`FeatureFileError`;
* our map files (QuPath GeoJSON, OME-Zarr): the map probe never raises, the readers raise only
  :class:`MapFileError`.

Deterministic (``derandomize=True``, no example database) and bounded: a few seconds each.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import CMU1, SLIDES
from hazards import tree_hash
from napari_xmag._reader import SLIDE_SUFFIXES, get_map_reader, get_reader, read_maps, read_slides
from napari_xmag.features import FeatureFileError, FeatureSet, read_features, write_features
from napari_xmag.maps import (
    MapFileError,
    MapGrid,
    SlideMap,
    read_geojson,
    read_ome_zarr,
    write_geojson,
    write_ome_zarr,
)
from napari_xmag.maps.geojson import geojson_layer_data
from napari_xmag.slide import Slide, SlideError

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()
pytestmark = pytest.mark.filterwarnings("ignore::napari_xmag.slide.MissingMppWarning")


def fresh(folder: Path, suffix: str) -> Path:
    """A new file name for every example: caches keyed by path, size and mtime never mix them."""
    return folder / f"f{next(_names)}{suffix}"


def says_path(err: BaseException, path: Path) -> None:
    assert str(path.name) in str(err) or str(path) in str(err), f"the message does not name the file: {err}"


# ---- slides ---------------------------------------------------------------------------------
TIFF_HEADERS = st.sampled_from([b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"", b"\x89PNG\r\n\x1a\n"])


def check_slide_file(path: Path) -> None:
    """The probe answers without raising; the reader and the store fail only with SlideError."""
    reader = get_reader(str(path))
    assert reader is None or reader is read_slides
    try:
        [(data, kwargs, kind)] = read_slides(str(path))
    except SlideError as err:
        says_path(err, path)
        return
    assert kind == "image" and kwargs["rgb"]
    try:
        with Slide(path) as slide:
            w, h = slide.dimensions
            image = slide.read_region(0, 0, (min(w, 64), min(h, 64)), level=0).image
            assert image.dtype == np.uint8 and image.shape[2] == 3
            for level, array in enumerate(data):
                assert array.shape == (slide.levels[level].height, slide.levels[level].width, 3)
    except SlideError as err:
        says_path(err, path)


@FUZZ
@given(head=TIFF_HEADERS, body=st.binary(max_size=512), suffix=st.sampled_from(SLIDE_SUFFIXES))
def test_random_bytes_as_a_slide(tmp_path, head, body, suffix) -> None:
    path = fresh(tmp_path, suffix)
    path.write_bytes(head + body)
    check_slide_file(path)


def _ifd_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of a classic little-endian TIFF's header and image directories."""
    ranges = [(0, 8)]
    (offset,) = struct.unpack("<I", data[4:8])
    while offset:
        (count,) = struct.unpack("<H", data[offset : offset + 2])
        end = offset + 2 + 12 * count + 4
        ranges.append((offset, end))
        (offset,) = struct.unpack("<I", data[end - 4 : end])
    return ranges


SMALL_BYTES = (SLIDES / "small.svs").read_bytes()
CMU1_BYTES = CMU1.path.read_bytes()


@st.composite
def mutated(draw, data: bytes, ranges: list[tuple[int, int]] | None = None) -> bytes:
    """``data`` with a few bytes overwritten (in ``ranges`` when given), or cut short."""
    out = bytearray(data)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(out) - 1))
        return bytes(out[:cut])
    for _ in range(draw(st.integers(1, 6))):
        if ranges:
            start, end = draw(st.sampled_from(ranges))
        else:
            start, end = 0, len(out)
        i = draw(st.integers(start, end - 1))
        out[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, out[i] ^ 0xFF, out[i] ^ 1]))
    return bytes(out)


@FUZZ
@given(data=mutated(SMALL_BYTES), suffix=st.sampled_from([".svs", ".tif"]))
def test_mutated_small_slide(tmp_path, data, suffix) -> None:
    path = fresh(tmp_path, suffix)
    path.write_bytes(data)
    check_slide_file(path)


@settings(FUZZ, max_examples=40)
@given(data=mutated(CMU1_BYTES, _ifd_ranges(CMU1_BYTES)))
def test_mutated_cmu1_directories(tmp_path, data) -> None:
    path = fresh(tmp_path, ".svs")
    path.write_bytes(data)
    try:
        check_slide_file(path)
    finally:
        path.unlink()  # 2 MB each


# ---- features files ---------------------------------------------------------------------------
def good_features() -> FeatureSet:
    coords = np.array([[0, 0], [898, 0], [0, 898]], np.int64)
    return FeatureSet(coords, np.arange(12, dtype=np.float32).reshape(3, 4),
                      {"model": "xmag", "mpp": 2.0, "weights_random": True}, {"patch_size": 224})


def check_features(path: Path) -> None:
    try:
        fs = read_features(path)
    except FeatureFileError as err:
        says_path(err, path)
        return
    n = len(fs.coords)
    assert fs.coords.dtype == np.int64 and fs.coords.shape == (n, 2)
    assert fs.features.dtype == np.float32 and fs.features.ndim == 2 and len(fs.features) == n
    assert fs.tokens is None or len(fs.tokens) == n
    assert isinstance(fs.attrs, dict) and isinstance(fs.coords_attrs, dict)
    json.dumps(fs.attrs, default=str)  # plain values


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".h5", ".hdf5"]))
def test_random_bytes_as_features(tmp_path, data, suffix) -> None:
    path = fresh(tmp_path, suffix)
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + data if data[:1] == b"\x00" else data)
    check_features(path)


@pytest.fixture(scope="module")
def good_h5(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("h5") / "good.h5"
    write_features(path, good_features())
    return path.read_bytes()


@FUZZ
@given(seed=st.data())
def test_mutated_features_h5(tmp_path, good_h5, seed) -> None:
    path = fresh(tmp_path, ".h5")
    path.write_bytes(seed.draw(mutated(good_h5)))
    check_features(path)


DTYPES = st.sampled_from(["int64", "int32", "uint8", "float32", "float64", "bool", "complex64", "str", "S4"])
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
ATTR_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8), st.binary(max_size=8),
    st.lists(st.integers(-100, 100), max_size=4), st.booleans(),
)


def _dataset(group: h5py.Group, name: str, dtype: str, shape: tuple[int, ...]) -> None:
    if dtype == "str":
        group.create_dataset(name, data=np.full(shape, "x", dtype=object), dtype=h5py.string_dtype())
    else:
        group.create_dataset(name, data=np.ones(shape, dtype=dtype))


@FUZZ
@given(
    parts=st.fixed_dictionaries({
        key: st.one_of(st.none(), st.just("group"), st.tuples(DTYPES, SHAPES))
        for key in ("coords", "features", "tokens")
    }),
    attrs=st.dictionaries(st.text(min_size=1, max_size=6), ATTR_VALUES, max_size=4),
)
def test_random_features_h5_structure(tmp_path, parts, attrs) -> None:
    path = fresh(tmp_path, ".h5")
    with h5py.File(path, "w") as f:
        for key, what in parts.items():
            if what == "group":
                f.create_group(key)
            elif what is not None:
                _dataset(f, key, *what)
            if key in f:
                for name, value in attrs.items():
                    # what h5py cannot store is not a file anyone can make
                    with contextlib.suppress(TypeError, ValueError):
                        f[key].attrs[name] = value
    check_features(path)


@FUZZ
@given(attrs=st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
))
def test_random_zarr_features_attributes(tmp_path, attrs) -> None:
    path = fresh(tmp_path, ".zarr")
    write_features(path, good_features())
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"] = attrs
    (path / "zarr.json").write_text(json.dumps(meta))
    check_features(path)


# ---- our map files: QuPath GeoJSON and OME-Zarr ---------------------------------------------------
def label_map() -> SlideMap:
    data = np.array([[0, 1, 1, 2], [2, 2, 0, 1], [1, 0, 2, 2]], np.int32)
    grid = MapGrid(0.0, 0.0, 200.0, 200.0, 200.0, 200.0, 3, 4, 0.5)
    meta = {"slide_mpp": 0.5, "slide_path": "slide.svs", "classes": ["a", "b"],
            "colors": [[255, 0, 0], [0, 0, 255]], "grid": grid.to_dict()}
    return SlideMap(data, grid.scale, grid.translate, "kmeans", "kmeans", meta, grid)


def heat_map() -> SlideMap:
    m = label_map()
    data = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    data[0, 0] = np.nan
    return SlideMap(data, m.scale, m.translate, "attention", "attention", {**m.metadata}, m.grid)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def json_mutation(draw, doc):
    """``doc`` with one value somewhere in it replaced by random JSON, or deleted."""
    doc = json.loads(json.dumps(doc))
    node, key = None, None
    current = doc
    for _ in range(draw(st.integers(0, 8))):
        if isinstance(current, dict) and current:
            k = draw(st.sampled_from(sorted(current)))
        elif isinstance(current, list) and current:
            k = draw(st.integers(0, len(current) - 1))
        else:
            break
        node, key, current = current, k, current[k]
    if node is None:
        return draw(JSON)
    if draw(st.booleans()) and isinstance(node, dict):
        del node[key]
    else:
        node[key] = draw(JSON)
    return doc


def check_map_file(path: Path, read) -> None:
    """The probe never raises; reading gives layers or raises MapFileError naming the file."""
    reader = get_map_reader(str(path))
    assert reader is None or reader is read_maps
    try:
        read(path)
        layers = read_maps(str(path)) if reader is not None else []
    except MapFileError as err:
        says_path(err, path)
        return
    for data, kwargs, kind in layers:
        assert kind in ("image", "labels", "shapes")
        assert len(kwargs["scale" if kind != "shapes" else "units"]) == 2
        if kind == "labels":
            assert data.ndim == 2 and np.issubdtype(data.dtype, np.integer)
        elif kind == "image":
            assert data.ndim in (2, 3)
        else:
            assert all(np.asarray(s).ndim == 2 and np.asarray(s).shape[1] == 2 for s in data)


@pytest.fixture(scope="module")
def good_geojson(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("geojson") / "good.geojson"
    write_geojson(path, label_map())
    return json.loads(path.read_text())


def read_geojson_layer(path: Path) -> None:
    read_geojson(path)
    geojson_layer_data(path)


@FUZZ
@given(data=st.data())
def test_mutated_geojson(tmp_path, good_geojson, data) -> None:
    path = fresh(tmp_path, ".geojson")
    doc = data.draw(json_mutation(good_geojson))
    if isinstance(doc, dict) and data.draw(st.booleans()):
        if not isinstance(doc.get("xmag"), dict):
            doc["xmag"] = {}
        doc["xmag"].setdefault("format", "napari-xmag-geojson")  # past the probe, into the reader
    path.write_text(json.dumps(doc))
    check_map_file(path, read_geojson_layer)


@FUZZ
@given(body=st.binary(max_size=256))
def test_random_bytes_as_geojson(tmp_path, body) -> None:
    path = fresh(tmp_path, ".geojson")
    path.write_bytes(b'{"xmag": {"format": "napari-xmag-geojson", "slide_mpp": 0.5}, ' + body)
    check_map_file(path, read_geojson_layer)


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zarr") / "good.ome.zarr"
    return write_ome_zarr(path, [heat_map(), label_map()])


def _json_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.name in (".zattrs", ".zarray", ".zgroup"))


@FUZZ
@given(data=st.data())
def test_mutated_ome_zarr_metadata(tmp_path, good_store, data) -> None:
    path = fresh(tmp_path, ".ome.zarr")
    shutil.copytree(good_store, path)
    files = _json_files(path)
    for _ in range(data.draw(st.integers(1, 2))):
        target = data.draw(st.sampled_from(files))
        doc = json.loads(target.read_text())
        target.write_text(json.dumps(data.draw(json_mutation(doc))))
    check_map_file(path, read_ome_zarr)


@FUZZ
@given(data=st.data())
def test_damaged_ome_zarr_chunks(tmp_path, good_store, data) -> None:
    path = fresh(tmp_path, ".ome.zarr")
    shutil.copytree(good_store, path)
    chunks = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    for chunk in data.draw(st.lists(st.sampled_from(chunks), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()):
            chunk.unlink()
        else:
            chunk.write_bytes(data.draw(st.binary(max_size=64)))
    check_map_file(path, read_ome_zarr)


# ---- the output folder: nothing foreign is ever touched ----------------------------------------
TARGET = "slide.h5"
_part_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=8, max_size=8)
ENTRIES = st.one_of(
    st.tuples(st.just("file"), st.sampled_from([TARGET, "other.h5", "slide.h5.zarr", "notes.txt"]),
              st.binary(max_size=64)),
    st.tuples(st.just("dir"), st.sampled_from([TARGET, "slide.zarr", "thesis"]), st.binary(max_size=16)),
    st.tuples(st.just("link_file"), st.sampled_from([TARGET, "linked.h5"]), st.just(b"")),
    st.tuples(st.just("link_dir"), st.sampled_from([TARGET, "linked"]), st.just(b"")),
    st.tuples(st.just("foreign_part"), _part_ids, st.binary(max_size=16)),
    st.tuples(st.just("foreign_owner"), _part_ids, st.sampled_from([
        b"not json", b'{"format": "napari-xmag-part", "target": "other.h5"}', b'{"format": "theirs"}'])),
    st.tuples(st.just("part_link"), _part_ids, st.just(b"")),
    st.tuples(st.just("dead_part"), _part_ids, st.just(b"")),
    st.tuples(st.just("live_part"), _part_ids, st.just(b"")),
)


@FUZZ
@given(entries=st.lists(ENTRIES, max_size=8), overwrite=st.booleans())
def test_writes_never_touch_foreign_entries(entries, overwrite) -> None:
    import fcntl
    import tempfile

    from napari_xmag._atomic import OutputExistsError

    data = FeatureSet(np.zeros((1, 2), np.int64), np.ones((1, 4), np.float32), {"slide_mpp": 0.5}, {})
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as held:
        root = Path(tmp)
        out, outside = root / "out", root / "outside"
        out.mkdir(), outside.mkdir()
        (outside / "secret.txt").write_bytes(b"outside")
        (outside / "dir").mkdir()
        (outside / "dir" / "kept.txt").write_bytes(b"kept")
        removable: set[str] = set()
        for kind, name, payload in entries:
            part = f".{TARGET}.{name}.part"
            path = out / (part if kind.endswith("part") or kind in ("foreign_owner", "part_link") else name)
            if os.path.lexists(path):
                continue
            if kind == "file":
                path.write_bytes(payload)
            elif kind in ("dir", "foreign_part"):
                path.mkdir()
                (path / "content.bin").write_bytes(payload)
            elif kind == "link_file":
                path.symlink_to(outside / "secret.txt")
            elif kind in ("link_dir", "part_link"):
                path.symlink_to(outside / "dir")
            elif kind == "foreign_owner":
                path.mkdir()
                (path / "owner").write_bytes(payload)
            else:  # our own temporaries: a dead writer's (removable) and a live one's
                path.mkdir()
                record = json.dumps({"format": "napari-xmag-part", "target": TARGET, "pid": 1})
                (path / "owner").write_text(record)
                (path / TARGET).write_bytes(b"half")
                if kind == "live_part":
                    fh = held.enter_context((path / "owner").open("r+"))
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    removable.add(path.name)
        before = tree_hash(root, inside=True)
        target_there = os.path.lexists(out / TARGET)
        try:
            write_features(out / TARGET, data, overwrite=overwrite)
            written = True
        except OutputExistsError:
            written = False
        after = tree_hash(root, inside=True)
        assert written == (overwrite or not target_there)

        drop = {TARGET} | removable if written else set()

        def kept(snapshot: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in snapshot.items() if [*k.split("/"), ""][1] not in drop or k == "out"}

        assert kept(after) == kept(before)  # every foreign entry, and everything outside, untouched
        for name in removable if written else ():
            assert not (out / name).exists()
        if written:
            assert read_features(out / TARGET).features.shape == (1, 4)
        earlier = {k.split("/")[1] for k in before if "/" in k}
        new_parts = {p.name for p in out.glob(f".{TARGET}.*.part")} - earlier
        assert not new_parts  # no temporary of this write is left behind
