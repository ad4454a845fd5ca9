"""The model zoo: registry contracts, the XMAG key mapping against a literal DINOv2 forward,
weight sources, safety and the model-folder round trip.

No weights are downloaded: checkpoints are built here with the real key names and shapes.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_xmag.models import (
    CONFIG_NAME,
    HEAD_NAMES,
    WEIGHTS_NAME,
    DistillationHead,
    ModelSpec,
    UnknownModelError,
    WeightsError,
    XmagModel,
    build_backbone,
    convert_checkpoint,
    count_parameters,
    create_model,
    dinov2_interpolate_pos_embed,
    format_param_count,
    get_spec,
    head_dims,
    list_models,
    load_checkpoint,
    read_model_config,
    resolve_device,
    save_model,
    sha256_file,
)

ALL = list_models()
XMAG = get_spec("xmag")
TINY = dict(XMAG.tiny_kwargs)  # depth, embed_dim, num_heads of the tiny configuration


# ----------------------------------------------------------------------------------------
# A DINOv2 checkpoint in the reference code's naming, and the reference code's forward


def dinov2_state_dict(
    depth: int, dim: int, *, grid: int = 37, patch: int = 14, seed: int = 0, chunks: int = 0
) -> dict[str, torch.Tensor]:
    """Keys and shapes of ``dinov2.models.vision_transformer.DinoVisionTransformer`` (MLP FFN),
    with values large enough that every part of the network changes the output."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.02, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + offset

    hidden = 4 * dim
    sd = {
        "cls_token": rnd(1, 1, dim, scale=0.5),
        "pos_embed": rnd(1, 1 + grid * grid, dim, scale=0.5),
        "mask_token": rnd(1, dim),
        "patch_embed.proj.weight": rnd(dim, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": rnd(dim, scale=0.1),
    }
    per_chunk = math.ceil(depth / chunks) if chunks else depth
    for i in range(depth):
        block = f"blocks.{i // per_chunk}.{i}." if chunks else f"blocks.{i}."
        sd.update(
            {
                block + "norm1.weight": rnd(dim, scale=0.1, offset=1.0),
                block + "norm1.bias": rnd(dim, scale=0.1),
                block + "attn.qkv.weight": rnd(3 * dim, dim, scale=dim**-0.5),
                block + "attn.qkv.bias": rnd(3 * dim, scale=0.1),
                block + "attn.proj.weight": rnd(dim, dim, scale=dim**-0.5),
                block + "attn.proj.bias": rnd(dim, scale=0.1),
                block + "ls1.gamma": rnd(dim, scale=0.1, offset=0.3),
                block + "norm2.weight": rnd(dim, scale=0.1, offset=1.0),
                block + "norm2.bias": rnd(dim, scale=0.1),
                block + "mlp.fc1.weight": rnd(hidden, dim, scale=dim**-0.5),
                block + "mlp.fc1.bias": rnd(hidden, scale=0.1),
                block + "mlp.fc2.weight": rnd(dim, hidden, scale=hidden**-0.5),
                block + "mlp.fc2.bias": rnd(dim, scale=0.1),
                block + "ls2.gamma": rnd(dim, scale=0.1, offset=0.3),
            }
        )
    sd["norm.weight"] = rnd(dim, scale=0.1, offset=1.0)
    sd["norm.bias"] = rnd(dim, scale=0.1)
    return sd


def dinov2_interpolate_pos_encoding(pos_embed, x, w, h, patch_size, naive=False):
    """``DinoVisionTransformer.interpolate_pos_encoding``, line for line (offset 0.1)."""
    previous_dtype = x.dtype
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    M = int(math.sqrt(N))
    kwargs = {"size": (w0, h0)} if naive else {"scale_factor": (float(w0 + 0.1) / M, float(h0 + 0.1) / M)}
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=False, **kwargs
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def dinov2_reference_cls(sd, x, *, num_heads, patch_size=14, naive=False):
    """The DINOv2 forward (prepare_tokens_with_masks, Block, final norm) from a DINOv2-named
    state dict, written out with plain torch ops; returns ``x_norm_clstoken``."""
    _B, _nc, w, h = x.shape
    dim = sd["cls_token"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch_size)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat((sd["cls_token"].expand(t.shape[0], -1, -1), t), dim=1)
    t = t + dinov2_interpolate_pos_encoding(sd["pos_embed"], t, w, h, patch_size, naive=naive)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})

    def ln(v, name):
        return F.layer_norm(v, (dim,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(t, p + "norm1")
        Bn, N, C = y.shape
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        qkv = qkv.reshape(Bn, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (C // num_heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(Bn, N, C)
        y = F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        t = t + y * sd[p + "ls1.gamma"]
        y = ln(t, p + "norm2")
        y = F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
        y = F.linear(F.gelu(y), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + y * sd[p + "ls2.gamma"]
    return ln(t, "norm")[:, 0]


def heads_state_dict(in_dim: int, out_dim: int, names=("head_g", "head_l"), seed=1, counter=True):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in names:
        sd.update(
            {
                f"{name}.0.weight": torch.randn(out_dim, in_dim, generator=g) * 0.1,
                f"{name}.0.bias": torch.randn(out_dim, generator=g),
                f"{name}.1.weight": torch.rand(out_dim, generator=g) + 0.5,
                f"{name}.1.bias": torch.randn(out_dim, generator=g),
                f"{name}.1.running_mean": torch.randn(out_dim, generator=g),
                f"{name}.1.running_var": torch.rand(out_dim, generator=g) + 0.5,
                f"{name}.3.weight": torch.randn(out_dim, out_dim, generator=g) * 0.1,
                f"{name}.3.bias": torch.randn(out_dim, generator=g),
            }
        )
        if counter:
            sd[f"{name}.1.num_batches_tracked"] = torch.tensor(1234)
    return sd


def prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


@pytest.fixture(scope="module")
def full_xmag_checkpoint(tmp_path_factory):
    """The released layout: the full-size ViT-B/14 backbone under ``model.``, as a .pth."""
    sd = dinov2_state_dict(depth=12, dim=768, seed=0)
    path = tmp_path_factory.mktemp("xmag") / "xmag_ema.pth"
    torch.save(prefixed(sd, "model."), path)
    return path, sd


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------
# The XMAG key mapping: exact agreement with DINOv2


def test_pos_embed_resampling_is_dinov2s_runtime_rule():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    tokens = torch.zeros(1, 1 + 16 * 16, 8)
    reference = dinov2_interpolate_pos_encoding(pos, tokens, 224, 224, 14)
    ours = dinov2_interpolate_pos_embed(pos, (16, 16))
    assert torch.equal(ours, reference)
    naive = dinov2_interpolate_pos_encoding(pos, tokens, 224, 224, 14, naive=True)
    assert not torch.allclose(ours, naive, atol=1e-3)  # size=(16, 16) samples elsewhere


def test_full_size_xmag_checkpoint_matches_dinov2_forward(full_xmag_checkpoint, images):
    images = images[:1]  # one image: a full ViT-B forward costs seconds on a small CPU
    path, sd = full_xmag_checkpoint
    backbone = build_backbone(XMAG, device="meta")
    converted = convert_checkpoint(load_checkpoint(path), backbone, XMAG)
    # strict: every key of the timm model, nothing more, same shapes
    target = backbone.state_dict()
    assert set(converted.backbone) == set(target)
    assert all(converted.backbone[k].shape == target[k].shape for k in target)
    assert set(sd) - set(converted.backbone) == {"mask_token"}
    assert "prefix 'model.'" in converted.location
    assert any("37x37 -> 16x16" in note for note in converted.notes)

    model = create_model("xmag", weights=path)
    assert model.weights.random is False
    assert model.weights.sha256 == sha256_file(path)
    assert model.heads is None
    x = model.preprocess(images)
    with torch.no_grad():
        ours = model.embed(x)
        reference = dinov2_reference_cls(sd, x, num_heads=12)
        naive = dinov2_reference_cls(sd, x, num_heads=12, naive=True)
    assert ours.shape == (1, 768) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # the test can fail: resampling with size=(16, 16) gives another embedding
    assert (naive - reference).abs().max() > 1e-3
    assert not torch.allclose(ours, naive, atol=1e-4)


def test_bare_checkpoint_file_is_identified_as_xmag(full_xmag_checkpoint):
    path, _ = full_xmag_checkpoint
    model = create_model(path)  # no name: keys and shapes pick the registry entry
    assert model.spec.name == "xmag"
    assert model.weights.source == str(path)


def tiny_reference_inputs(seed=0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    return x


@pytest.mark.parametrize(
    ("layout", "wrap"),
    [
        ("flat", lambda sd, hd: sd),
        ("module-prefix", lambda sd, hd: prefixed(sd, "module.")),
        ("nested-state_dict", lambda sd, hd: {"state_dict": prefixed(sd, "backbone."), "epoch": 7}),
        (
            "student-and-teacher",
            lambda sd, hd: {
                "teacher": prefixed(dinov2_state_dict(2, 48, seed=5), "backbone."),  # wrong width
                "student": {**prefixed(sd, "backbone."), **hd},
                "iteration": 100,
            },
        ),
        ("chunked", None),
    ],
)
def test_tiny_dinov2_layouts_load_and_match(tmp_path, layout, wrap):
    depth, dim, heads = TINY["depth"], TINY["embed_dim"], TINY["num_heads"]
    sd = dinov2_state_dict(depth, dim, seed=3, chunks=2 if layout == "chunked" else 0)
    flat = dinov2_state_dict(depth, dim, seed=3)
    ckpt = prefixed(sd, "student.backbone.") if wrap is None else wrap(sd, heads_state_dict(dim, dim))
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    model = create_model("xmag", weights=path, tiny=True)
    x = tiny_reference_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed(x), dinov2_reference_cls(flat, x, num_heads=heads), atol=1e-5, rtol=1e-5
        )
    assert (model.heads is not None) == (layout == "student-and-teacher")


@pytest.mark.parametrize(
    ("names", "counter"),
    [
        (("head_g", "head_l"), True),
        (("global_head", "local_head"), False),
        (("head_global", "head_local"), True),
    ],
)
def test_distillation_heads_are_loaded(tmp_path, names, counter):
    dim = TINY["embed_dim"]
    hd = heads_state_dict(dim, dim, names=names, counter=counter)
    path = tmp_path / "with_heads.safetensors"
    from safetensors.torch import save_file

    save_file(prefixed({**prefixed(dinov2_state_dict(2, dim), "model."), **hd}, ""), str(path))
    model = create_model("xmag", weights=path, tiny=True)
    assert model.weights.heads == "checkpoint"
    assert list(model.heads) == list(HEAD_NAMES)
    for ours, theirs in zip(HEAD_NAMES, names, strict=True):
        head = model.heads[ours]
        assert torch.equal(head[0].weight, hd[f"{theirs}.0.weight"])
        assert torch.equal(head[1].running_mean, hd[f"{theirs}.1.running_mean"])
        assert torch.equal(head[3].bias, hd[f"{theirs}.3.bias"])
        assert int(head[1].num_batches_tracked) == (1234 if counter else 0)
    # heads=False leaves them out; the backbone is the same
    plain = create_model("xmag", weights=path, tiny=True, heads=False)
    assert plain.heads is None


def test_heads_have_the_xmag_layout():
    head = DistillationHead(768, 1536)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "0.weight": (1536, 768),
        "0.bias": (1536,),
        "1.weight": (1536,),
        "1.bias": (1536,),
        "1.running_mean": (1536,),
        "1.running_var": (1536,),
        "1.num_batches_tracked": (),
        "3.weight": (1536, 1536),
        "3.bias": (1536,),
    }
    head.eval()
    assert head(torch.randn(2, 5, 768)).shape == (2, 5, 1536)
    assert head_dims(XMAG) == (768, 1536)  # the student's width -> UNI2-h's
    assert head_dims(XMAG, tiny=True) == (TINY["embed_dim"], get_spec("uni2-h").tiny_kwargs["embed_dim"])
    with pytest.raises(ValueError, match="not a distilled student"):
        create_model("uni", weights="random", tiny=True, heads=True)


# ----------------------------------------------------------------------------------------
# Wrong checkpoints, unsafe files, offline hub


def test_wrong_architecture_is_refused_with_the_offending_keys(tmp_path):
    # full size: UNI (ViT-L/16) shapes against the XMAG ViT-B/14, checked without memory
    uni_sd = build_backbone(get_spec("uni"), device="meta").state_dict()
    with pytest.raises(WeightsError) as info:
        convert_checkpoint(uni_sd, build_backbone(XMAG, device="meta"), XMAG, source="uni.bin")
    text = str(info.value)
    assert "'xmag'" in text and "unexpected keys" in text and "blocks.12." in text
    assert "patch_embed.proj.weight: checkpoint (1024, 3, 16, 16) vs model (768, 3, 14, 14)" in text
    # and through create_model with a real (tiny) UNI-shaped file
    uni = create_model("uni", weights="random", tiny=True)
    path = tmp_path / "uni_tiny.pth"
    torch.save(uni.backbone.state_dict(), path)
    with pytest.raises(WeightsError, match=r"patch_embed\.proj\.weight: checkpoint \(32, 3, 16, 16\)"):
        create_model("xmag", weights=path, tiny=True)
    with pytest.raises(WeightsError, match="no ViT backbone"):
        torch.save({"foo": torch.zeros(3)}, tmp_path / "nothing.pt")
        create_model("xmag", weights=tmp_path / "nothing.pt", tiny=True)


class _Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model.cls_token": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        load_checkpoint(path)
    with pytest.raises(WeightsError):
        create_model("xmag", weights=path, tiny=True)
    with pytest.raises(WeightsError):
        create_model(path)
    assert not marker.exists()
    # the file really is malicious: a plain unpickling would have run the command
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def test_offline_hub_says_what_failed_and_where_to_put_files(offline_hub):
    with pytest.raises(WeightsError) as info:
        create_model("xmag")  # weights="auto" is the hub repository, never random
    text = str(info.value)
    assert "hf-hub:AI4PATH/XMAG" in text and "HF_HUB_OFFLINE=1" in text
    assert "https://huggingface.co/AI4PATH/XMAG" in text
    assert "model.safetensors" in text and "--model PATH" in text and "HF_HOME" in text
    assert str(offline_hub / "hub") in text
    with pytest.raises(WeightsError, match=r"accept the model's terms .* HF_TOKEN"):
        create_model("hf-hub:MahmoodLab/UNI2-h", tiny=True)


def test_gated_or_unreachable_hub_errors_are_explained(tmp_path, monkeypatch):
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    def raising(error_type, message):
        def fake(*args, **kwargs):
            err = error_type.__new__(error_type)  # constructors differ between versions
            Exception.__init__(err, message)
            raise err

        return fake

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from napari_xmag.models import hub

    monkeypatch.setattr(hub, "hf_hub_download", raising(GatedRepoError, "401 gated"))
    with pytest.raises(WeightsError, match=r"gated and this account has not been granted access") as info:
        create_model("uni2-h", tiny=True)
    assert "https://huggingface.co/MahmoodLab/UNI2-h" in str(info.value)
    monkeypatch.setattr(hub, "hf_hub_download", raising(LocalEntryNotFoundError, "no network"))
    monkeypatch.setattr(hub, "snapshot_download", raising(LocalEntryNotFoundError, "no cache"))
    with pytest.raises(WeightsError, match=r"could not be reached and the files are not in the local cache"):
        create_model("virchow2", tiny=True)


def test_offline_hub_uses_files_put_in_the_cache(offline_hub):
    snapshot = offline_hub / "hub" / "models--AI4PATH--XMAG" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    sd = dinov2_state_dict(TINY["depth"], TINY["embed_dim"], seed=9)
    torch.save(prefixed(sd, "model."), snapshot / "pytorch_model.bin")
    model = create_model("xmag", tiny=True)
    assert model.weights.source == "hf-hub:AI4PATH/XMAG" and not model.weights.random
    x = tiny_reference_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), dinov2_reference_cls(sd, x, num_heads=TINY["num_heads"]))


def test_random_weights_only_when_asked_and_recorded():
    model = create_model("xmag", weights="random", tiny=True)
    assert model.weights.random is True and model.weights.sha256 is None
    assert model.weights.source == "random"
    with pytest.raises(WeightsError, match="not an existing file"):
        create_model("xmag", weights="imagenet", tiny=True)
    with pytest.raises(UnknownModelError, match="registered models"):
        create_model("no-such-model", weights="random")


# ----------------------------------------------------------------------------------------
# Model folders


def test_save_and_load_round_trip(tmp_path):
    dim = TINY["embed_dim"]
    src = tmp_path / "src.pth"
    torch.save({**prefixed(dinov2_state_dict(2, dim, seed=4), "model."), **heads_state_dict(dim, dim)}, src)
    model = create_model("xmag", weights=src, tiny=True)
    folder = save_model(model, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model"] == "xmag" and config["heads"] is True and config["tiny"] is True
    assert read_model_config(folder)["sha256"] == sha256_file(folder / WEIGHTS_NAME)

    again = create_model(folder)
    assert again.weights.source == str(folder) and again.weights.heads == "checkpoint"
    x = tiny_reference_inputs()
    with torch.no_grad():
        assert torch.equal(again.embed(x), model.embed(x))
        assert torch.equal(again.heads["local"](model.embed(x)), model.heads["local"](model.embed(x)))
    # the bare weight file knows its model through its metadata
    assert create_model(folder / WEIGHTS_NAME, tiny=True).spec.name == "xmag"
    with pytest.raises(FileExistsError):
        save_model(model, folder)
    save_model(again, folder, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------------------
# Contracts over the whole registry


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_and_embeds(name, images, tmp_path):
    spec = get_spec(name)
    model = create_model(name, weights="random", tiny=True)
    assert isinstance(model, XmagModel) and model.spec is spec and not model.training
    x = model.preprocess(images)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    expected = (torch.from_numpy(images[0, 0, 0]).float() / 255 - torch.tensor(spec.mean)) / torch.tensor(
        spec.std
    )
    torch.testing.assert_close(x[0, :, 0, 0], expected)
    with torch.no_grad():
        pooled, grid = model.embed(x, tokens=True)
        assert torch.equal(model(images), pooled)
        feats = model.forward_features(x)
    width = TINY["embed_dim"]
    assert pooled.shape == (2, spec.embed_dim_for(width)) == (2, model.embed_dim)
    # its own storage, not a view of the token output: kept batches must not keep every token
    assert pooled.untyped_storage().nbytes() == pooled.numel() * pooled.element_size()
    assert pooled.dtype == grid.dtype == torch.float32 and torch.isfinite(pooled).all()
    assert grid.shape == (2, *spec.grid, width)
    assert feats.shape == (2, spec.num_prefix_tokens + spec.grid[0] * spec.grid[1], width)
    assert torch.equal(grid.reshape(2, -1, width), feats[:, spec.num_prefix_tokens :])
    if spec.embedding == "cls+mean":
        torch.testing.assert_close(pooled[:, width:], feats[:, spec.num_prefix_tokens :].mean(1))
    # the model folder round trip holds for every architecture
    with torch.no_grad():
        assert torch.equal(create_model(save_model(model, tmp_path / name)).embed(x), pooled)


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
    assert ALL[0] == "xmag" and set(ALL) == {"xmag", "uni2-h", "uni", "virchow2", "h-optimus-0"}
    dims = {n: get_spec(n).embed_dim for n in ALL}
    assert dims == {"xmag": 768, "uni2-h": 1536, "uni": 1024, "virchow2": 2560, "h-optimus-0": 1536}
    assert get_spec("H-Optimus-0").commercial_use and get_spec("h-optimus-0").licence == "Apache-2.0"
    assert get_spec("xmag").distilled_from == "uni2-h" and not get_spec("xmag").commercial_use


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in {"cpu", "mps"}
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu-please")


def test_inputs_are_checked():
    model = create_model("h-optimus-0", weights="random", tiny=True)
    with pytest.raises(ValueError, match="224x224"):
        model.embed(torch.zeros(1, 3, 112, 112))
    with pytest.raises(TypeError, match="uint8"):
        model.preprocess(np.zeros((1, 224, 224, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.preprocess(np.zeros((224, 224, 3), dtype=np.uint8))
    dynamic = create_model("uni2-h", weights="random", tiny=True)  # dynamic_img_size=True
    with torch.no_grad():
        _, grid = dynamic.embed(torch.zeros(1, 3, 112, 140), tokens=True)
    assert grid.shape == (1, 8, 10, TINY["embed_dim"])


def test_unknown_bare_checkpoint_says_which_models_were_tried(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save(prefixed(dinov2_state_dict(2, 32), "model."), path)  # tiny: no full-size entry fits
    with pytest.raises(
        WeightsError, match=r"matches no registered model .*create_model\(NAME, weights=PATH\)"
    ):
        create_model(path)
