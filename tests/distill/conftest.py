"""Fixtures of the distillation tests."""

from __future__ import annotations

import time

import pytest

from cases import CMU1
from napari_xmag.distill import (
    PairIndex,
    PairSettings,
    read_slide_list,
    train,
)
from tiny_training import tiny_config


# ---- it learns ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """200 steps on the cached teacher, 15% of the pairs held out.

    One view per pair without flips or jitter (two identical views would only double the
    work; augmentation has its own tests), a learning rate for 200 steps rather than 200 000.
    """
    root = tmp_path_factory.mktemp("distill")
    config = tiny_config(
        root / "run", stride=16, steps=200, lr=2e-3, batch_size=32, views=1, flips=False,
        cache=root / "teacher.zarr", cache_in_memory=True, holdout=0.15, holdout_block_um=600,
    )
    start = time.perf_counter()
    result = train(config)
    return config, result, time.perf_counter() - start


# ---- augmentation and the cache ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def few_pairs():
    """A dozen pairs whose 5x image is the 20x region downsampled (the paper's way)."""
    settings = PairSettings(
        patch_size=112, crop_size=112, stride=112, min_tissue=0.5, five_x_source="downsample"
    )
    return PairIndex.build(read_slide_list([CMU1.path]), settings)
