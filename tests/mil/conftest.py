"""Fixtures of the MIL tests: one torch thread, feature bags, six colour slides embedded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from colour_slides import PINK, PURPLE, colour_slide, tiny_student
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These models are tiny: on a shared 2-core machine, two torch threads spin-waiting on
    each other make a step 10-100x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
