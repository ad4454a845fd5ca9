"""How a checkpoint's keys map onto a timm backbone (and the XMAG distillation heads).

Finds the backbone inside wrapper prefixes and nested checkpoint dicts, translates the DINOv2
reference naming, and resamples a DINOv2 ``pos_embed`` exactly as DINOv2 does at run time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .files import WeightsError
from .heads import HEAD_NAMES
from .registry import ModelSpec

__all__ = [
    "HEAD_ALIASES",
    "NESTED_KEYS",
    "ConvertedCheckpoint",
    "convert_checkpoint",
    "dinov2_interpolate_pos_embed",
]

#: Keys of a checkpoint dict that may hold the state dict, visited in this order.
NESTED_KEYS: tuple[str, ...] = (
    "ema",
    "model_ema",
    "state_dict_ema",
    "student",
    "model",
    "state_dict",
    "module",
    "network",
    "teacher",
)
#: Names of the distillation heads in checkpoints -> our head names.
HEAD_ALIASES: Mapping[str, tuple[str, ...]] = {
    # the official trainer (PyTorch Lightning): student_global_head.projector.{0,1,3}.*
    "global": ("heads.global", "student_global_head.projector", "global_head.projector", "head_global",
               "global_head", "head_g", "g_head"),
    "local": ("heads.local", "student_local_head.projector", "local_head.projector", "head_local",
              "local_head", "head_l", "l_head"),
}
#: Which student a training checkpoint gives when it holds both (``student_ema.model.*`` and
#: ``student.model.*``, as the official XMAG trainer writes): the EMA, which is what XMAG releases.
STUDENT_VARIANTS = ("ema", "student")
_ANCHOR = "patch_embed.proj.weight"
#: Hugging Face ``transformers`` Dinov2Model names (Phikon-v2, Midnight, facebook/dinov2-*, the
#: AutoModel folders of custom-code repositories): translated to timm's before matching.
_HF_ANCHOR = "embeddings.patch_embeddings.projection.weight"
_HF_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(?:fc1|weights_in)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(?:fc2|weights_out|down_proj)\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.(norm[12])\.", r"blocks.\1.\2."),
    (r"^layernorm\.", "norm."),
)
# transformers 4 names (attention.attention.query, ...) and 5 (attention.q_proj, ...): both in use
_HF_QKV_RE = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$"
)
_HF_QKV_PART = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}
# transformers 5 splits the packed SwiGLU input: gate (the SiLU half, first) and up
_HF_GLU_RE = re.compile(r"^encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)$")
_DINOV2_OFFSET = 0.1  # DINOv2's interpolate_offset
_MAX_LISTED = 5
_HEAD_RE = re.compile(
    r"^(?P<pre>(?:.*\.)?)(?P<name>"
    + "|".join(re.escape(a) for names in HEAD_ALIASES.values() for a in names)
    + r")\.(?P<rest>\d+\.[A-Za-z_]+)$"
)
_CHUNK_RE = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")




def dinov2_interpolate_pos_embed(
    pos_embed: torch.Tensor,
    grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 1,
    offset: float = _DINOV2_OFFSET,
) -> torch.Tensor:
    """Resample a square DINOv2 ``pos_embed`` to ``grid`` as DINOv2 does at run time.

    Follows ``DinoVisionTransformer.interpolate_pos_encoding``: float32, prefix (class)
    embedding kept, patch part reshaped to ``(1, M, M, dim)`` and permuted to channels-first,
    bicubic ``F.interpolate`` without antialiasing, driven by
    ``scale_factor=((rows + offset) / M, (cols + offset) / M)``. The scale factor, not the
    output size, sets the sampling coordinates, so this differs from ``size=grid``.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise WeightsError(f"pos_embed must be (1, tokens, dim), got {tuple(pos_embed.shape)}")
    pos = pos_embed.float()
    prefix, patch = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    n, dim = patch.shape[1], patch.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise WeightsError(f"pos_embed has {n} patch positions, not a square grid")
    rows, cols = grid
    patch = F.interpolate(
        patch.reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=((rows + offset) / m, (cols + offset) / m),
        mode="bicubic",
        antialias=False,
    )
    if tuple(patch.shape[-2:]) != (rows, cols):  # pragma: no cover - guards the offset rule
        raise WeightsError(f"resampling pos_embed gave {tuple(patch.shape[-2:])}, not {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((prefix, patch), dim=1)


@dataclass
class ConvertedCheckpoint:
    """A checkpoint mapped onto one model: backbone and head state dicts, and where they were."""

    backbone: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor] | None
    location: str
    notes: list[str] = field(default_factory=list)


@dataclass
class _Mismatch:
    location: str
    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)

    def describe(self) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {label} keys, e.g. {', '.join(items[:_MAX_LISTED])}{more}")
        if self.shapes:
            more = f" (+{len(self.shapes) - _MAX_LISTED} more)" if len(self.shapes) > _MAX_LISTED else ""
            parts.append(f"{len(self.shapes)} shape mismatches: {'; '.join(self.shapes[:_MAX_LISTED])}{more}")
        return f"{self.location}: " + "; ".join(parts)


def _tensor_dicts(obj: Any, label: str = "", depth: int = 0) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Flat ``{name: tensor}`` dicts inside a checkpoint, in the preferred order."""
    if not isinstance(obj, Mapping):
        return
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        yield (label or "the checkpoint", tensors)
    if depth >= 3:
        return
    keys = [k for k in NESTED_KEYS if k in obj] + [
        k for k in obj if isinstance(k, str) and k not in NESTED_KEYS
    ]
    for key in keys:
        value = obj[key]
        if isinstance(value, Mapping):
            yield from _tensor_dicts(
                value, f"{label}[{key!r}]" if label else f"checkpoint[{key!r}]", depth + 1
            )


def _from_hf_dinov2(flat: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """``transformers`` Dinov2Model names -> timm's, under any wrapper prefix: query, key and
    value concatenated into ``qkv``, layer scales to ``ls*.gamma``, SwiGLU ``weights_in/out`` to
    ``fc1/fc2`` (the same packed order: ``silu(x1) * x2``); ``mask_token`` dropped. Keys that are
    not a Dinov2Model's are kept as they are (heads, a teacher)."""
    prefixes = {k[: -len(_HF_ANCHOR)] for k in flat if k == _HF_ANCHOR or k.endswith("." + _HF_ANCHOR)}
    if not prefixes:
        return dict(flat)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    glu: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        pre = next((p for p in sorted(prefixes, key=len, reverse=True) if key.startswith(p)), None)
        if pre is None:
            out[key] = value
            continue
        rest = key[len(pre):]
        match = _HF_QKV_RE.match(rest)
        if match:
            qkv.setdefault((pre, match[1], match[3]), {})[_HF_QKV_PART.get(match[2], match[2])] = value
            continue
        match = _HF_GLU_RE.match(rest)
        if match:
            glu.setdefault((pre, match[1], match[3]), {})[match[2]] = value
            continue
        if rest == "embeddings.mask_token":
            continue
        for pattern, replacement in _HF_RENAMES:
            renamed, n = re.subn(pattern, replacement, rest)
            if n:
                rest = renamed
                break
        out[pre + rest] = value
    for (pre, layer, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            joined = torch.cat([parts["query"], parts["key"], parts["value"]])
            out[f"{pre}blocks.{layer}.attn.qkv.{kind}"] = joined
    for (pre, layer, kind), parts in glu.items():
        if set(parts) == {"gate_proj", "up_proj"}:
            out[f"{pre}blocks.{layer}.mlp.fc1.{kind}"] = torch.cat([parts["gate_proj"], parts["up_proj"]])
    notes.append("translated transformers Dinov2Model names (query/key/value -> qkv)")
    return out


def _backbone_prefixes(keys: Sequence[str], variant: str = "ema") -> list[str]:
    """Wrapper prefixes before a backbone's keys: a student before the teacher, the EMA student
    first (``variant="student"``: the trained one first), then the shortest."""
    found = {k[: -len(_ANCHOR)] for k in keys if k == _ANCHOR or k.endswith("." + _ANCHOR)}

    def rank(prefix: str) -> tuple[bool, bool, int, str]:
        ema = "ema" in prefix.lower()
        return ("teacher" in prefix, ema == (variant != "ema"), len(prefix), prefix)

    return sorted(found, key=rank)


def _split_heads(flat: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{prefix: {"global.0.weight": t, ...}}`` for every head key, grouped by wrapper prefix."""
    to_ours = {alias: ours for ours, aliases in HEAD_ALIASES.items() for alias in aliases}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        match = _HEAD_RE.match(key)
        if match:
            ours = to_ours[match["name"]]
            groups.setdefault(match["pre"], {})[f"{ours}.{match['rest']}"] = value
    return groups


def _dinov2_to_timm(
    sd: dict[str, torch.Tensor], model: nn.Module, notes: list[str], *, resample: bool
) -> dict[str, torch.Tensor]:
    """DINOv2 reference names -> timm names: drop ``mask_token`` (a training-only token),
    flatten ``BlockChunk`` indices, rename SwiGLU ``w12``/``w3``; with ``resample``, bring a
    ``pos_embed`` of another grid to the model's with :func:`dinov2_interpolate_pos_embed`."""
    out: dict[str, torch.Tensor] = {}
    chunked = False
    for key, value in sd.items():
        if key == "mask_token":
            continue
        match = _CHUNK_RE.match(key)
        if match:  # DINOv2 BlockChunk: blocks.<chunk>.<global index>.<rest>
            key = f"blocks.{match[1]}.{match[2]}"
            chunked = True
        key = re.sub(r"^(blocks\.\d+\.mlp)\.w12\.", r"\1.fc1.", key)
        key = re.sub(r"^(blocks\.\d+\.mlp)\.w3\.", r"\1.fc2.", key)
        out[key] = value
    if "mask_token" in sd:
        notes.append("dropped mask_token")
    if chunked:
        notes.append("flattened chunked blocks")
    pos = out.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if resample and pos is not None and target is not None and tuple(pos.shape) != tuple(target.shape):
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        vit: Any = model  # a timm VisionTransformer: its attributes are not typed
        grid = (int(vit.patch_embed.grid_size[0]), int(vit.patch_embed.grid_size[1]))
        n = pos.shape[1] - prefix
        if pos.ndim == 3 and pos.shape[-1] == target.shape[-1] and math.isqrt(n) ** 2 == n:
            out["pos_embed"] = dinov2_interpolate_pos_embed(pos, grid, num_prefix_tokens=prefix)
            m = math.isqrt(n)
            notes.append(f"resampled pos_embed {m}x{m} -> {grid[0]}x{grid[1]} (DINOv2 run-time rule)")
    return out


def _compare(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], location: str) -> _Mismatch:
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    return _Mismatch(location, missing, unexpected, shapes)


def convert_checkpoint(
    checkpoint: Any,
    backbone: nn.Module,
    spec: ModelSpec,
    *,
    source: str = "the checkpoint",
    heads: nn.Module | None = None,
    variant: str = "ema",
) -> ConvertedCheckpoint:
    """Map a loaded checkpoint onto ``backbone`` (and ``heads``), checking every key and shape.

    Looks through nested dicts (:data:`NESTED_KEYS` first) and wrapper prefixes (any prefix
    before ``patch_embed.proj.weight``; non-teacher and shorter first) and takes the first
    backbone that fits exactly. For a ``dinov2`` spec the DINOv2 names are translated and a
    ``pos_embed`` of another size is resampled with :func:`dinov2_interpolate_pos_embed`.
    Head keys (:data:`HEAD_ALIASES`) are returned when ``heads`` is given and present.
    ``variant``: of a training checkpoint's two students, the EMA one (default) or the trained
    ``"student"``; the one taken is named in :attr:`ConvertedCheckpoint.location`.
    Raises :class:`WeightsError` naming the closest candidate's offending keys.
    """
    if variant not in STUDENT_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(STUDENT_VARIANTS)}, not {variant!r}")
    target = backbone.state_dict()
    head_target = heads.state_dict() if heads is not None else None
    attempts: list[_Mismatch] = []
    for label, found in _tensor_dicts(checkpoint):
        hf_notes: list[str] = []
        flat = _from_hf_dinov2(found, hf_notes)
        head_groups = _split_heads(flat)
        head_keys = {k for k in flat if _HEAD_RE.match(k)}
        for prefix in _backbone_prefixes([k for k in flat if k not in head_keys], variant):
            where = f"{label}, prefix {prefix!r}" if prefix else label
            sub = {
                k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix) and k not in head_keys
            }
            notes: list[str] = list(hf_notes)
            resample = spec.checkpoint_format != "timm" or bool(hf_notes)  # DINOv2 rule, not timm's
            sub = _dinov2_to_timm(sub, backbone, notes, resample=resample)
            mismatch = _compare(sub, target, where)
            if mismatch.size:
                attempts.append(mismatch)
                continue
            head_sd = None
            if head_target is not None:
                head_sd = _pick_heads(head_groups, prefix, head_target, where)
            return ConvertedCheckpoint(sub, head_sd, where, notes)
    if not attempts:
        raise WeightsError(
            f"{source} holds no ViT backbone (no '*{_ANCHOR}' key)"
            + ("" if isinstance(checkpoint, Mapping) else f"; it is a {type(checkpoint).__name__}")
        )
    best = min(attempts, key=lambda m: m.size)
    err = WeightsError(
        f"{source} does not fit model {spec.name!r} ({spec.architecture}): {best.describe()}"
        + (f" [{len(attempts)} candidate backbones tried]" if len(attempts) > 1 else "")
    )
    err.mismatches = best.size
    raise err


def _pick_heads(
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    backbone_prefix: str,
    target: Mapping[str, torch.Tensor],
    where: str,
) -> dict[str, torch.Tensor] | None:
    """The head keys belonging with the chosen backbone, checked against ``target``."""
    owners = [pre for pre in groups if backbone_prefix.startswith(pre)]
    if not owners:
        return None
    sd = dict(groups[max(owners, key=len)])
    present = {k.split(".", 1)[0] for k in sd}
    if present != set(HEAD_NAMES):
        raise WeightsError(
            f"{where}: found distillation head(s) {sorted(present)} but need {list(HEAD_NAMES)}"
        )
    for key, value in target.items():  # older BatchNorm checkpoints lack the counter
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    mismatch = _compare(sd, target, f"{where}, distillation heads")
    if mismatch.size:
        raise WeightsError(f"distillation heads do not fit: {mismatch.describe()}")
    return sd
