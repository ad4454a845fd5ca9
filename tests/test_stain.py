"""Stain normalisation: Macenko and Reinhard by their definitions, fitted once per slide, recorded
in the features; on CMU-1 with a synthetic stain shift, normalised features are closer to the
original's than raw ones (random weights: this shows the mechanism, not what a trained model
gains)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features
from napari_xmag.slide import Slide
from napari_xmag.stain import MACENKO_HE, StainError, fit_stain_normalizer, tissue_pixels
from stain_shift import shift_stains, write_slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory, cmu1_rgb):
    folder = tmp_path_factory.mktemp("stains")
    original = write_slide(cmu1_rgb, folder / "original.tif")
    return original, write_slide(shift_stains(cmu1_rgb), folder / "shifted.tif")


def test_macenko_fit_finds_haematoxylin_and_eosin(slides) -> None:
    with Slide(slides[0]) as slide:
        norm = fit_stain_normalizer(slide, "macenko")
        px = tissue_pixels(slide.thumbnail(512))
    he = norm.source["he"]
    np.testing.assert_allclose(np.linalg.norm(he, axis=0), 1.0, atol=1e-6)  # unit OD vectors
    assert (he > 0).all() and he[0, 0] > he[0, 1]  # haematoxylin absorbs more red than eosin
    cos = (he * MACENKO_HE / np.linalg.norm(MACENKO_HE, axis=0)).sum(0)
    assert cos.min() > 0.9, cos  # close to the standard H&E vectors
    out = norm(px[None, :4096].reshape(1, 64, 64, 3))
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.uint8


def test_macenko_brings_a_shifted_slide_back(slides) -> None:
    """The same tissue in two stainings: after normalisation, pixel differences shrink."""
    with Slide(slides[0]) as a, Slide(slides[1]) as b:
        patch_a = a.read_region(898, 898, 224, mpp=2.0).image[None]
        patch_b = b.read_region(898, 898, 224, mpp=2.0).image[None]
        na, nb = fit_stain_normalizer(a, "macenko"), fit_stain_normalizer(b, "macenko")
    raw = np.abs(patch_a.astype(float) - patch_b).mean()
    normalised = np.abs(na(patch_a).astype(float) - nb(patch_b)).mean()
    assert normalised < 0.5 * raw, (raw, normalised)
    print(f"mean |RGB difference| shifted vs original: raw {raw:.1f}, macenko {normalised:.1f}")


def test_reinhard_matches_the_reference_statistics(slides) -> None:
    from napari_xmag.stain import _lab

    with Slide(slides[1]) as slide:
        norm = fit_stain_normalizer(slide, "reinhard")
        px = tissue_pixels(slide.thumbnail(512))
    out = norm(px[None, :, None, :]).reshape(-1, 3)
    lab = _lab(out)
    np.testing.assert_allclose(lab.mean(0), norm.target["mean"], atol=3.0)  # after clipping to RGB
    np.testing.assert_allclose(lab.std(0), norm.target["std"], rtol=0.15)


def test_embedding_records_it_and_normalised_features_are_closer(slides, tmp_path) -> None:
    from napari_xmag.models import create_model

    model = create_model("xmag", weights="random", tiny=True, overrides={"init_values": 1.0})
    feats = {}
    for method in ("none", "macenko"):
        for name, slide in zip(("original", "shifted"), slides, strict=True):
            settings = EmbedSettings(device="cpu", stain_norm=method, workers=1)
            out = embed_slide(slide, model, tmp_path / method / name, settings, progress=False).output
            data = read_features(out)
            assert data.attrs["stain_norm"] == method
            assert data.attrs["stain_reference"] == ("default" if method != "none" else "")
            feats[method, name] = data.features

    def cos(a, b):
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())

    raw = cos(feats["none", "original"], feats["none", "shifted"])
    normalised = cos(feats["macenko", "original"], feats["macenko", "shifted"])
    print(f"cosine shifted vs original (tiny random model): raw {raw:.4f}, macenko {normalised:.4f}")
    assert normalised > raw

    # another normalisation is another run: not skipped, said
    from napari_xmag.slide import SlideError

    with pytest.raises(SlideError, match=r"other settings.*stain_norm"):
        embed_slide(slides[0], model, tmp_path / "macenko" / "original", EmbedSettings(device="cpu"),
                    progress=False)


def test_a_bad_reference_is_named(slides, tmp_path) -> None:
    bad = tmp_path / "ref.png"
    bad.write_bytes(b"not an image")
    with Slide(slides[0]) as slide, pytest.raises(StainError, match=r"ref\.png: cannot be read"):
        fit_stain_normalizer(slide, "macenko", bad)
    with pytest.raises(ValueError, match="stain normalisation must be one of"):
        EmbedSettings(stain_norm="vahadane")
