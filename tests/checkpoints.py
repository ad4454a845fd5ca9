"""State dicts with the real key names of the released checkpoints, and the reference DINOv2
forward they must match."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from napari_xmag.models import (
    get_spec,
    list_models,
)

ALL = list_models()
XMAG = get_spec("xmag")
TINY = dict(XMAG.tiny_kwargs)  # depth, embed_dim, num_heads of the tiny configuration


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


def tiny_reference_inputs(seed=0):
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def lightning_checkpoint(path):
    """The official XMAG trainer's ``.ckpt`` layout (PyTorch Lightning), tiny: two students (the
    trained ``student.model.*`` and its EMA ``student_ema.model.*``), the teacher and the heads
    one level down (``student_*_head.projector.*``). Returns (student, ema, heads) state dicts."""
    from napari_xmag.models.factory import head_dims

    student = dinov2_state_dict(TINY["depth"], TINY["embed_dim"], seed=1)
    ema = dinov2_state_dict(TINY["depth"], TINY["embed_dim"], seed=2)
    teacher = dinov2_state_dict(TINY["depth"], TINY["embed_dim"], seed=3)
    in_dim, out_dim = head_dims(XMAG, tiny=True)
    heads = heads_state_dict(in_dim, out_dim, names=("student_global_head.projector",
                                                     "student_local_head.projector"), seed=4)
    state = {**prefixed(student, "student.model."), **prefixed(ema, "student_ema.model."),
             **prefixed(teacher, "teacher.model."), **heads}
    torch.save({"state_dict": state, "epoch": 9, "global_step": 1200,
                "pytorch-lightning_version": "2.4.0", "optimizer_states": [], "lr_schedulers": []}, path)
    return student, ema, heads
