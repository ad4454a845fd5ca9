"""Live maps while a slide embeds: updates as batches finish, the final file the same bits."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from napari_xmag import maps
from napari_xmag.embed import EmbedCancelled, EmbedSettings, embed_slide, embed_slide_steps
from napari_xmag.features import read_features
from napari_xmag.live import EMBEDDED, WAITING, LivePCA, embed_slide_live, live_updates
from napari_xmag.models import create_model

SETTINGS = EmbedSettings(batch_size=2, precision="fp32")


@pytest.fixture(scope="module")
def tiny_xmag():
    return create_model("xmag", weights="random", tiny=True)


def run_live(*args, **kwargs):
    updates, result = [], []

    def keep():
        result.append((yield from embed_slide_live(*args, **kwargs)))

    updates = list(keep())
    return updates, result[0]


def test_live_run_fills_in_and_ends_with_the_same_file(tmp_path, pyramid_path, tiny_xmag) -> None:
    straight = embed_slide(pyramid_path, tiny_xmag, tmp_path / "straight", SETTINGS, progress=False)
    updates, live = run_live(pyramid_path, tiny_xmag, tmp_path / "live", SETTINGS, progress=False, every=0.0,
                             near=(0.0, 0.0))
    a, b = read_features(straight.output), read_features(live.output)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.coords, b.coords)
    # the final map is the one a run without live maps gives, to the bit
    for kind in (maps.pca_map, maps.kmeans_map):
        assert np.array_equal(kind(straight.output).data, kind(live.output).data, equal_nan=True)
    first, last = updates[0], updates[-1]
    assert first.done == 0 and first.pca is None and not first.final
    cells = first.progress.data
    assert set(np.unique(cells)) == {0, WAITING}  # the patch grid, nothing embedded yet
    assert last.final and last.done == last.total == straight.patches
    assert set(np.unique(last.progress.data)) == {0, EMBEDDED}
    assert np.array_equal(last.progress.data > 0, cells > 0)  # the same grid throughout
    assert [u.done for u in updates] == sorted(u.done for u in updates)
    # on the final map's grid, drawn where the final PCA map has colour
    final_pca = maps.pca_map(live.output)
    assert last.pca is not None and last.pca.data.shape == final_pca.data.shape
    assert last.pca.data.dtype == np.uint8  # light to redraw; 0 where no patch, as pca_map(dtype="uint8")
    assert np.array_equal(last.pca.data.any(axis=-1), np.isfinite(final_pca.data).all(axis=-1))
    assert last.pca.scale == final_pca.scale and last.pca.translate == final_pca.translate
    # near the origin first: the first batch embedded is the top-left one
    second = updates[1].progress.data
    filled = np.argwhere(second == EMBEDDED)
    assert filled.size and filled[:, 0].min() == np.argwhere(cells > 0)[:, 0].min()


def test_colours_already_drawn_never_change(tmp_path, pyramid_path, tiny_xmag) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(100, 16)).astype(np.float32)
    done = np.zeros(100, bool)
    pca = LivePCA(fit_patches=20)
    done[:19] = True
    assert pca.update(features, done) is None  # too few to fit
    done[:30] = True
    first = pca.update(features, done).copy()
    assert np.isfinite(first[:30]).all() and np.isnan(first[30:]).all()
    assert (first[:30] >= 0).all() and (first[:30] <= 1).all()
    done[:] = True
    second = pca.update(features, done)
    assert np.array_equal(second[:30], first[:30]) and np.isfinite(second).all()


def test_updates_come_at_most_every_interval(tmp_path, pyramid_path, tiny_xmag) -> None:
    """A clock that moves 0.1 s a step: with every=0.25 s, the first, then every third, and the last."""
    now = [0.0]

    def clock():
        now[0] += 0.1
        return now[0]

    steps = embed_slide_steps(pyramid_path, tiny_xmag, tmp_path, SETTINGS, progress=False)
    updates = list(live_updates(steps, every=0.25, clock=clock))
    total = updates[-1].total
    batches = -(-total // 2)
    assert updates[0].done == 0 and updates[-1].done == total
    assert len(updates) < batches  # throttled
    assert len(updates) >= batches // 3


def test_cancel_keeps_what_is_done(tmp_path, pyramid_path, tiny_xmag) -> None:
    cancel = threading.Event()
    seen = []
    def watch():
        for update in embed_slide_live(pyramid_path, tiny_xmag, tmp_path, SETTINGS, progress=False,
                                       every=0.0, cancel=cancel):
            seen.append(update.done)
            if update.done >= 4:
                cancel.set()

    with pytest.raises(EmbedCancelled) as stopped:
        watch()
    assert seen[-1] == 4 and stopped.value.kept is not None
    assert [p.name for p in tmp_path.iterdir()] == [f"{Path(pyramid_path).stem}.h5.partial"]
    updates, result = run_live(pyramid_path, tiny_xmag, tmp_path, SETTINGS, progress=False, every=0.0)
    assert updates[0].done == 4  # resumed: the kept patches are drawn at once
    assert result.patches == updates[-1].total
