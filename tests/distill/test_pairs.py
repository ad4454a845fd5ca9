"""5x/20x training pairs: held-out fields share no tissue with training fields."""

from __future__ import annotations

import numpy as np

from cases import CMU1
from napari_xmag.distill import (
    PairIndex,
    PairSettings,
    read_slide_list,
    spatial_split,
)


def test_held_out_fields_share_no_tissue_with_training_fields() -> None:
    settings = PairSettings(patch_size=112, crop_size=112, stride=16)
    index = PairIndex.build(read_slide_list([CMU1.path]), settings)
    train_pos, held_pos = spatial_split(index, 0.15, 600)
    assert len(train_pos) > 200 and len(held_pos) > 80
    side = index.geometries[0].region_size_level0
    delta = np.abs(index.coords[train_pos, None] - index.coords[None, held_pos])
    assert not ((delta[..., 0] < side) & (delta[..., 1] < side)).any()
