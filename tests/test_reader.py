"""The napari reader and sample data, through npe2 and in a real viewer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import BAD_FILES, BOXES, CMU1, SLIDES, save_screenshot, tissue_fraction
from napari_xmag._reader import get_reader, read_slides
from napari_xmag.slide import MissingMppWarning, SlideOpenError, SlideReadError


def test_get_reader_accepts_slides() -> None:
    assert get_reader(str(CMU1.path)) is read_slides
    assert get_reader([str(CMU1.path), str(BOXES.path)]) is read_slides


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: str(SLIDES / "broken.svs"),  # right suffix, not a slide
        lambda tmp: str(tmp / "missing.svs"),
        lambda tmp: str(tmp),  # a folder
        lambda tmp: (tmp / "notes.txt").write_text("x") and str(tmp / "notes.txt"),
        lambda tmp: (tmp / "empty.tiff").write_bytes(b"") or str(tmp / "empty.tiff"),
        lambda tmp: [],
        lambda tmp: [str(CMU1.path), str(SLIDES / "broken.svs")],
    ],
    ids=["broken", "missing", "folder", "txt", "empty-tiff", "no-paths", "one-bad-of-two"],
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


def test_unreadable_fails_once_with_the_cause() -> None:
    path = SLIDES / BAD_FILES["unreadable"][0]
    assert get_reader(str(path)) is read_slides  # OpenSlide opens it; only its tiles are bad
    with pytest.raises(SlideReadError, match=r"unreadable\.svs.*Bogus marker length"):
        read_slides(str(path))


def test_unopenable_fails_with_the_cause() -> None:
    with pytest.raises(SlideOpenError, match=r"unopenable\.tiff.*Unsupported TIFF compression"):
        read_slides(str(SLIDES / "unopenable.tiff"))


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
