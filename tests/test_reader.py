"""The napari readers: slides (every test slide, through npe2, in a real viewer), the sample
data, and map files (OME-Zarr, GeoJSON) claimed only when they are ours."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from cases import ALL_CASES, BOXES, CMU1, SLIDES, Case, save_screenshot, tissue_fraction
from feature_sets import MPP, STEP, add, feature_set
from napari_xmag._reader import get_map_reader, get_reader, read_maps, read_slides
from napari_xmag.features import write_features
from napari_xmag.maps import write_ome_zarr
from napari_xmag.maps.geojson import label_polygons
from napari_xmag.slide import MissingMppWarning, SlideOpenError, SlideReadError


def test_get_reader_accepts_slides() -> None:
    assert get_reader(str(CMU1.path)) is read_slides
    assert get_reader([str(CMU1.path), str(BOXES.path)]) is read_slides


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: str(tmp / "missing.svs"),
        lambda tmp: str(tmp),  # a folder
        lambda tmp: (tmp / "notes.txt").write_text("x") and str(tmp / "notes.txt"),
        lambda tmp: (tmp / "empty.tiff").write_bytes(b"") or str(tmp / "empty.tiff"),
        lambda tmp: [],
        lambda tmp: [str(CMU1.path), str(SLIDES / "broken.svs")],
    ],
    ids=["missing", "folder", "txt", "empty-tiff", "no-paths", "one-bad-of-two"],
)
def test_get_reader_declines_without_raising(tmp_path, make) -> None:
    assert get_reader(make(tmp_path)) is None


def test_layer_data() -> None:
    [(data, kwargs, kind)] = read_slides(str(CMU1.path))
    assert kind == "image"
    assert [a.shape for a in data] == [(2967, 2220, 3)]
    assert kwargs["rgb"] and kwargs["multiscale"]
    assert kwargs["scale"] == (0.499, 0.499)
    assert kwargs["units"] == ("um", "um")
    assert kwargs["cache"] is False  # the store's bounded tile cache, not napari's quarter of RAM
    assert kwargs["name"] == "CMU-1-Small-Region"
    meta = kwargs["metadata"]
    assert meta["xmag"]["path"] == str(CMU1.path)
    assert meta["xmag"]["mpp_x"] == 0.499
    assert meta["properties"]["openslide.vendor"] == "aperio"


def test_layer_without_mpp_is_in_pixels_and_warns() -> None:
    with pytest.warns(MissingMppWarning, match=r"boxes\.tiff"):
        [(data, kwargs, _)] = read_slides(str(BOXES.path))
    assert "scale" not in kwargs and "units" not in kwargs
    assert [a.shape[:2] for a in data] == [(h, w) for w, h in BOXES.level_dimensions]


@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_every_test_slide_is_one_layer_or_one_clear_error(case: Case) -> None:
    # claimed when OpenSlide knows the format (even if it then fails: the user hears why)
    assert get_reader(str(case.path)) is (read_slides if case.recognised else None)
    if case.error:
        error = SlideOpenError if case.open_error else SlideReadError  # unreadable: only its tiles are bad
        with pytest.raises(error, match=rf"{re.escape(case.file)}.*{case.error}"):
            read_slides(str(case.path))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        [(data, kwargs, kind)] = read_slides(str(case.path))
    assert kind == "image" and kwargs["name"] == case.name
    assert [a.shape for a in data] == [(h, w, 3) for w, h in case.level_dimensions]
    assert kwargs.get("scale") == ((case.mpp, case.mpp) if case.mpp else None)


def test_npe2_finds_the_reader() -> None:
    import npe2

    npe2.PluginManager.instance().discover()
    layers = npe2.read([str(CMU1.path)], stack=False, plugin_name="napari-xmag")
    assert len(layers) == 1 and layers[0][1]["name"] == "CMU-1-Small-Region"


def test_viewer_shows_tissue(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(CMU1.path), plugin="napari-xmag")
    assert layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    save_screenshot(shot, "reader-cmu1.png", tmp_path)
    assert shot.shape[0] > 100 and shot.shape[1] > 100
    # tissue colour on screen, not a blank, black or white canvas: CMU-1 is about a third
    # stained tissue, and the slide fills about half of this canvas
    assert tissue_fraction(shot) > 0.08, tissue_fraction(shot)
    assert (shot[..., :3].min(-1) > 230).mean() > 0.1  # the slide's white glass is on screen too


def test_viewer_survives_a_corrupt_slide(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"unreadable\.svs.*Bogus marker length"):
        viewer.open(str(SLIDES / "unreadable.svs"), plugin="napari-xmag")
    assert len(viewer.layers) == 0  # nothing half-added
    [layer] = viewer.open(str(CMU1.path), plugin="napari-xmag")  # still usable
    assert layer.name == "CMU-1-Small-Region"


def test_sample_data_opens_through_the_reader(make_napari_viewer, xmag_cache) -> None:
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingMppWarning)
        viewer.open_sample("napari-xmag", "tissue")
    [layer] = viewer.layers
    assert layer.multiscale and [a.shape for a in layer.data] == [
        (6144, 8192, 3), (1536, 2048, 3), (384, 512, 3)
    ]
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    assert (xmag_cache / "xmag-sample-v1.svs").exists()
    assert tissue_fraction(np.asarray(layer.data[2])) > 0.3


# ---- map files -------------------------------------------------------------------------------
def test_geojson_opens_as_shapes_on_the_slide(make_napari_viewer, tmp_path, label_map) -> None:
    import napari

    viewer = make_napari_viewer()
    layer = add(viewer, label_map)
    path = str(tmp_path / "k.geojson")
    assert napari.save_layers(path, [layer], plugin="napari-xmag") == [path]
    assert get_map_reader(path) is read_maps
    [shapes] = viewer.open(path, plugin="napari-xmag")
    polygons = sum(len(getattr(g, "geoms", [g])) for g in label_polygons(label_map).values())
    assert len(shapes.data) == polygons and shapes.shape_type == ["polygon"] * polygons
    inner = int(label_map.data[3, 3])
    [i] = [k for k, lab in enumerate(shapes.features["label"]) if lab == inner]
    # the inner square's corners: level-0 (400, 800) .. (1000, 1400), drawn at (px - 0.5) * mpp
    ys, xs = shapes.data[i][:, 0], shapes.data[i][:, 1]
    assert (xs.min(), xs.max()) == ((400 - 0.5) * MPP, (1000 - 0.5) * MPP)
    assert (ys.min(), ys.max()) == ((800 - 0.5) * MPP, (1400 - 0.5) * MPP)
    # they coincide with the label map's cell edges in world coordinates
    np.testing.assert_allclose(layer.world_to_data((ys.min(), xs.min())), (1.5, 1.5))
    assert shapes.features["class"][i] == f"cluster {inner}"
    # the ring is drawn with its hole (napari: one polygon, hole walked from the exterior)
    ring = int(label_map.data[1, 1])
    [j] = [k for k, lab in enumerate(shapes.features["label"]) if lab == ring]
    shape_j = shapes._data_view.shapes[j]
    tri = shape_j._face_vertices[shape_j._face_triangles]
    area = 0.5 * np.abs((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
                        - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1])).sum()
    assert area == pytest.approx((25 - 9) * (STEP * MPP) ** 2)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---- probing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: str(write_features(tmp / "slide.zarr", feature_set([[0, 0]]))),  # a features store
        lambda tmp: str(write_features(tmp / "slide.h5", feature_set([[0, 0]]))),
        lambda tmp: write(tmp / "q.geojson", '{"type": "FeatureCollection", "features": []}'),
        lambda tmp: write(tmp / "bad.geojson", '{"xmag": "napari-xmag-geojson", '),
        lambda tmp: (tmp / "file.zarr").write_bytes(b"x") and str(tmp / "file.zarr"),
        lambda tmp: str(tmp / "missing.ome.zarr"),
        lambda tmp: str(tmp),
        lambda tmp: [],
    ],
    ids=["features-zarr", "features-h5", "plain-geojson", "broken-geojson", "zarr-file", "missing", "folder",
         "none"],
)
def test_get_map_reader_declines_without_raising(tmp_path, make) -> None:
    assert get_map_reader(make(tmp_path)) is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ome_zarr.*", "ignore:Dimension:UserWarning")
def test_other_ome_zarr_is_not_ours(tmp_path, heat_map) -> None:
    path = write_ome_zarr(tmp_path / "m.ome.zarr", heat_map)
    assert get_map_reader(str(path)) is read_maps and get_map_reader(str(path) + "/") is read_maps
    assert get_map_reader([str(path), str(tmp_path / "nope.geojson")]) is None
    assert get_reader(str(path)) is None  # the slide reader leaves it alone
    attrs = json.loads((path / ".zattrs").read_text())
    del attrs["xmag"]
    (path / ".zattrs").write_text(json.dumps(attrs))  # now just an OME-Zarr image
    assert get_map_reader(str(path)) is None
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    other = tmp_path / "other.ome.zarr"
    write_image(np.zeros((8, 8), np.uint8), zarr.open_group(str(other), mode="w", zarr_format=2), axes="yx",
                fmt=FormatV04())
    assert (other / ".zattrs").is_file() and get_map_reader(str(other)) is None
