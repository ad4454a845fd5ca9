"""Weights in Hugging Face ``transformers`` Dinov2Model layout (Phikon-v2, Midnight-12k,
facebook/dinov2-*, and the AutoModel folders of custom-code repositories), under any wrapper
prefix: loaded without importing any code of theirs, features equal to transformers' own forward.
The reference is transformers itself, on tiny random configurations."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from napari_xmag.models import create_model

transformers = pytest.importorskip("transformers")


def hf_model(**config):
    cfg = transformers.Dinov2Config(num_hidden_layers=2, num_attention_heads=2, image_size=224,
                                    layerscale_value=1.0, **config)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():  # weights large enough that every part counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save(sd, folder, prefix=""):
    folder.mkdir()
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "dinov2", "auto_map": {"AutoModel": "evil.Model"}}')
    return folder


@pytest.mark.parametrize("prefix", ["", "backbone.", "model.dinov2."])
def test_phikon_v2_layout_loads_exactly(tmp_path, prefix) -> None:
    hf = hf_model(hidden_size=32, intermediate_size=128, patch_size=16)
    folder = save(hf.state_dict(), tmp_path / "phikon", prefix)
    model = create_model("phikon-v2", weights=str(folder), tiny=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = model.embed(x)
        theirs = hf(pixel_values=x).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert not (folder / "__pycache__").exists()  # nothing of theirs was imported


def test_midnight_swiglu_layout_loads_exactly(tmp_path) -> None:
    """SwiGLU (dinov2-giant's FFN): ``weights_in``/``weights_out`` in timm's packed order; the
    embedding is CLS + mean patch token."""
    hf = hf_model(hidden_size=48, use_swiglu_ffn=True, patch_size=14)
    folder = save(hf.state_dict(), tmp_path / "midnight")
    model = create_model("midnight-12k", weights=str(folder), tiny=True,
                         overrides={"embed_dim": 48, "num_heads": 2, "depth": 2})
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = model.embed(x)
        tokens = hf(pixel_values=x).last_hidden_state
    theirs = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_dinov2_positions_of_another_grid_are_resampled(tmp_path) -> None:
    """facebook/dinov2-base is published at 518 px (37 x 37 positions): resampled to 16 x 16."""
    cfg = transformers.Dinov2Config(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                                    intermediate_size=128, patch_size=14, image_size=518)
    sd = transformers.Dinov2Model(cfg).state_dict()
    assert sd["embeddings.position_embeddings"].shape[1] == 37 * 37 + 1
    model = create_model("dinov2-vitb14", weights=str(save(sd, tmp_path / "dinov2")), tiny=True)
    assert model.backbone.pos_embed.shape[1] == 16 * 16 + 1


def as_transformers4(sd):
    """The names transformers 4 wrote (and the published Phikon-v2 / Midnight files use):
    attention.attention.{query,key,value}, attention.output.dense, a packed mlp.weights_in."""
    import re

    names = {"q": "query", "k": "key", "v": "value"}
    out = {}
    for key, value in sd.items():
        key = re.sub(r"attention\.(q|k|v)_proj\.", lambda m: f"attention.attention.{names[m[1]]}.", key)
        key = key.replace("attention.o_proj.", "attention.output.dense.")
        out[key.replace("mlp.down_proj.", "mlp.weights_out.")] = value
    for key in [k for k in out if ".mlp.gate_proj." in k]:
        up = key.replace("gate_proj", "up_proj")
        out[key.replace("gate_proj", "weights_in")] = torch.cat([out.pop(key), out.pop(up)])
    return out


def test_transformers4_names_load_the_same(tmp_path) -> None:
    hf = hf_model(hidden_size=48, use_swiglu_ffn=True, patch_size=14)
    old = as_transformers4(hf.state_dict())
    assert any(".attention.attention.query." in k for k in old) and any("weights_in" in k for k in old)
    kw = {"tiny": True, "overrides": {"embed_dim": 48, "num_heads": 2, "depth": 2}}
    new_model = create_model("midnight-12k", weights=str(save(hf.state_dict(), tmp_path / "v5")), **kw)
    old_model = create_model("midnight-12k", weights=str(save(old, tmp_path / "v4")), **kw)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(new_model.embed(x), old_model.embed(x))


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_folders_load_like_one_file(tmp_path, kind) -> None:
    """A folder with ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``) and
    its shards loads as the single file would; a shard named outside the folder is refused."""
    import json

    from napari_xmag.models import WeightsError
    from napari_xmag.models.files import sha256_file

    hf = hf_model(hidden_size=32, intermediate_size=128, patch_size=16)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    whole = create_model("phikon-v2", weights=str(save(sd, tmp_path / "whole")), tiny=True)
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = sorted(sd)
    halves = {f"part-0000{i + 1}-of-00002.{kind}": keys[i::2] for i in (0, 1)}
    weight_map = {}
    for name, part in halves.items():
        tensors = {k: sd[k] for k in part}
        if kind == "safetensors":
            save_file(tensors, str(folder / name))
        else:
            torch.save(tensors, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    indexes = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
    index = folder / indexes[kind]
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded = create_model("phikon-v2", weights=str(folder), tiny=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.equal(whole.embed(x), sharded.embed(x))
    assert sharded.weights.sha256 == sha256_file(index) and len(sharded.weights.sha256) == 64
    index.write_text(json.dumps({"weight_map": {keys[0]: "../elsewhere.safetensors"}}))
    with pytest.raises(WeightsError, match="outside its folder"):
        create_model("phikon-v2", weights=str(folder), tiny=True)
