"""The model registry: complete metadata, full-size configs, registry values."""

from __future__ import annotations

import json
import re

import pytest

from checkpoints import ALL
from napari_xmag.models import (
    ModelSpec,
    build_backbone,
    count_parameters,
    format_param_count,
    get_spec,
)


@pytest.mark.parametrize("name", ALL)
def test_metadata_is_complete(name):
    spec = get_spec(name)
    assert isinstance(spec, ModelSpec)
    assert spec.licence and isinstance(spec.gated, bool) and isinstance(spec.commercial_use, bool)
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", spec.hf_id or "")
    assert re.fullmatch(r"\d+M|\d+\.\dB", spec.param_count)
    assert spec.native_mpp == (2.0 if spec.role == "student" else 0.5)
    assert len(spec.mean) == len(spec.std) == 3 and all(0 < v < 1 for v in (*spec.mean, *spec.std))
    assert spec.embedding in ("cls", "cls+mean")
    assert spec.tiny_kwargs and spec.img_size == 224
    hash(spec)
    json.dumps(spec.to_dict())
    if not spec.commercial_use:
        assert "NC" in spec.licence


@pytest.mark.parametrize("name", ALL)
def test_full_size_config_on_meta_device(name):
    spec = get_spec(name)
    backbone = build_backbone(spec, device="meta")
    assert format_param_count(count_parameters(backbone)) == spec.param_count
    assert spec.embed_dim_for(backbone.embed_dim) == spec.embed_dim
    assert tuple(backbone.patch_embed.grid_size) == spec.grid
    assert backbone.patch_embed.patch_size[0] == spec.patch_size
    assert backbone.num_prefix_tokens == spec.num_prefix_tokens
    tiny = build_backbone(spec, tiny=True, device="meta")
    assert tiny.num_prefix_tokens == backbone.num_prefix_tokens
    assert tuple(tiny.patch_embed.grid_size) == spec.grid


def test_registry_values():
    assert ALL[0] == "xmag" and set(ALL) == {"xmag", "uni2-h", "uni", "virchow2", "h-optimus-0", "h0-mini",
                                             "phikon-v2", "midnight-12k", "dinov2-vitb14"}
    dims = {n: get_spec(n).embed_dim for n in ALL}
    assert dims == {"xmag": 768, "uni2-h": 1536, "uni": 1024, "virchow2": 2560, "h-optimus-0": 1536,
                    "h0-mini": 1536, "phikon-v2": 1024, "midnight-12k": 3072, "dinov2-vitb14": 768}
    assert get_spec("midnight-12k").licence == "MIT" and get_spec("midnight-12k").commercial_use
    assert get_spec("h0-mini").gated and get_spec("h0-mini").num_register_tokens == 4
    assert get_spec("H-Optimus-0").commercial_use and get_spec("h-optimus-0").licence == "Apache-2.0"
    assert get_spec("xmag").distilled_from == "uni2-h" and not get_spec("xmag").commercial_use
