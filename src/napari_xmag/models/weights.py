"""Where weights come from, how they are read safely, and how their keys map onto timm.

Sources (the ``weights=`` argument of :func:`~napari_xmag.models.create_model`):

* ``"hf-hub:ORG/NAME"``: a Hugging Face repository, through ``huggingface_hub`` with its
  normal cache and ``HF_TOKEN``. Offline (``HF_HUB_OFFLINE=1``, no network) or refused
  (gated, 401) it raises :class:`WeightsError` naming what failed and where to put the file.
* a file: ``.safetensors`` through safetensors; ``.bin``/``.pth``/``.pt``/``.ckpt`` only
  through ``torch.load(weights_only=True)``, which refuses pickles that carry code.
* a directory: ``model.safetensors``, ``pytorch_model.bin``, or its single weight file.

Nothing from a checkpoint or a hub repository is ever executed: no ``trust_remote_code``,
no full unpickling. Key mapping (:func:`convert_checkpoint`) finds the backbone inside
wrapper prefixes and nested checkpoint dicts, translates the DINOv2 reference naming, and
resamples a DINOv2 ``pos_embed`` exactly as DINOv2 does at run time.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import HEAD_NAMES
from .registry import ModelSpec

__all__ = [
    "WEIGHT_SUFFIXES",
    "ConvertedCheckpoint",
    "WeightsError",
    "WeightsInfo",
    "convert_checkpoint",
    "dinov2_interpolate_pos_embed",
    "download_from_hub",
    "find_weights_file",
    "load_checkpoint",
    "resolve_weights",
    "sha256_file",
]

#: Files read as weights, safetensors first.
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_PICKLE_SUFFIXES = frozenset(WEIGHT_SUFFIXES[1:])
_DIR_PREFERRED = ("model.safetensors", "pytorch_model.bin")
HUB_PREFIX = "hf-hub:"

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
    "global": ("heads.global", "head_global", "global_head", "head_g", "g_head"),
    "local": ("heads.local", "head_local", "local_head", "head_l", "l_head"),
}
_ANCHOR = "patch_embed.proj.weight"
_DINOV2_OFFSET = 0.1  # DINOv2's interpolate_offset
_MAX_LISTED = 5
_HEAD_RE = re.compile(
    r"^(?P<pre>(?:.*\.)?)(?P<name>"
    + "|".join(re.escape(a) for names in HEAD_ALIASES.values() for a in names)
    + r")\.(?P<rest>\d+\.[A-Za-z_]+)$"
)
_CHUNK_RE = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")


class WeightsError(RuntimeError):
    """Weights cannot be found, read or fitted; the message says what and what to do."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from.

    ``source``: ``"random"``, ``"hf-hub:ORG/NAME"`` or a local path as given.
    ``sha256``: of the weight file read (``None`` for random weights).
    ``heads``: ``"checkpoint"`` or ``"random"`` when the model carries heads, else ``None``.
    """

    source: str
    sha256: str | None
    random: bool
    path: str | None = None
    heads: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "random": self.random, "path": self.path}


# ----------------------------------------------------------------------------------------
# Reading files


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a weight file without executing anything it contains.

    ``.safetensors`` through safetensors; pickle-based formats only through
    ``torch.load(weights_only=True)``. A pickle that references any callable beyond
    tensors and plain containers is refused with :class:`WeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors ships with timm
            raise WeightsError("reading .safetensors needs the 'safetensors' package") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"cannot read {path} as safetensors: {exc}") from exc
    if suffix not in _PICKLE_SUFFIXES:
        raise WeightsError(
            f"unknown weight file type {path.name!r}; expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return torch_load_safely(path, WeightsError)


def torch_load_safely(path: str | os.PathLike[str], error: type[Exception], what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``, its refusals turned into one line of ``error``.

    torch's own message advises retrying with ``weights_only=False``, which would run the code
    the file carries: the line says what was refused and how to convert a trusted file instead.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise error(
            f"refused to read {path}: it holds Python objects that torch.load(weights_only=True) "
            f"does not allow ({unpickling_reason(exc)}). Such a pickle could run code when loaded, so it is "
            "never fully unpickled. If you trust the file, re-save just its tensors on a machine where "
            "running it is acceptable, e.g. safetensors.torch.save_file(state_dict, 'model.safetensors')."
        ) from None
    except Exception as exc:
        raise error(f"cannot read {path} as a {what}: {_first_line(exc)}") from None


def unpickling_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with
    ``weights_only=False`` (which would run the code)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        boilerplate = ("Weights only load failed", "Check the documentation", "Please file")
        if line and not line.startswith(boilerplate):
            return line.rstrip(".")
    return "objects other than tensors and plain containers"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def find_weights_file(folder: str | os.PathLike[str]) -> Path:
    """The weight file of a directory: ``model.safetensors``, ``pytorch_model.bin``, or the only one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"not a directory: {folder}")
    for name in _DIR_PREFERRED:
        if (folder / name).is_file():
            return folder / name
    for suffixes in ((".safetensors",), tuple(_PICKLE_SUFFIXES)):
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise WeightsError(f"{folder} holds several weight files ({names}); pass the one to use")
    raise WeightsError(
        f"no weight file in {folder}: expected model.safetensors, pytorch_model.bin or a single "
        f"{'/'.join(WEIGHT_SUFFIXES)} file"
    )


# ----------------------------------------------------------------------------------------
# Hugging Face Hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_cache_dir() -> str | None:
    """The cache folder from the environment as it is now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _offline_help(repo_id: str, filenames: Sequence[str], model: str | None, gated: bool, cache: str) -> str:
    url = f"https://huggingface.co/{repo_id}"
    access = (
        f"accept the model's terms at {url} with your account, set HF_TOKEN (or run `hf auth login`), then "
        if gated
        else ""
    )
    named = f"create_model({model!r}, weights=PATH)" if model else "create_model(PATH)"
    return (
        f"To use these weights without network access: on a connected machine {access}download "
        f"{' or '.join(filenames)} from {url}, copy the file to this machine and pass its path as "
        f"the model (create_model(PATH); CLI --model PATH) or as the weights ({named}). "
        f"Or copy a Hugging Face cache that holds the repository and set HF_HOME to it "
        f"(the cache searched here was {cache})."
    )


def download_from_hub(
    repo_id: str,
    filenames: Sequence[str] = _DIR_PREFERRED,
    *,
    model: str | None = None,
    gated: bool = False,
    any_weights: bool = True,
) -> Path:
    """Local path of the first of ``filenames`` in hub repository ``repo_id``, downloading if needed.

    Uses the normal Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``) and ``HF_TOKEN``.
    Honours ``HF_HUB_OFFLINE=1`` as set at call time. If none of ``filenames`` exists and
    ``any_weights`` is true, the repository's single weight file is used instead.
    Every failure raises :class:`WeightsError` saying what failed and how to work offline.
    """
    try:
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:
        raise WeightsError(
            f"hf-hub:{repo_id} needs the 'huggingface_hub' package (pip install huggingface_hub), "
            "or pass a local weight file"
        ) from exc

    if "HF_HUB_OFFLINE" in os.environ:  # as set now; huggingface_hub read it at its import
        offline = _env_true("HF_HUB_OFFLINE")
    else:
        offline = bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
    cache_dir = _hub_cache_dir()
    cache_shown = cache_dir or str(getattr(hf_constants, "HF_HUB_CACHE", "~/.cache/huggingface/hub"))
    token = os.environ.get("HF_TOKEN") or None
    where = f"hf-hub:{repo_id}" + (f" (model {model!r})" if model else "")
    unreachable = False
    missing_remote: list[str] = []

    def fail(reason: str, exc: BaseException | None = None) -> WeightsError:
        err = WeightsError(
            f"cannot get weights from {where}: {reason}. "
            + _offline_help(repo_id, filenames, model, gated, cache_shown)
        )
        if exc is not None:
            err.__cause__ = exc
        return err

    for name in filenames:
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    name,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=offline or unreachable,
                )
            )
        except GatedRepoError as exc:
            raise fail(
                f"the repository is gated and this account has not been granted access "
                f"({'HF_TOKEN is set' if token else 'no HF_TOKEN set'})",
                exc,
            ) from exc
        except RepositoryNotFoundError as exc:
            raise fail(
                "the repository was not found or access was refused (401): check the id; a gated or "
                "private repository needs HF_TOKEN",
                exc,
            ) from exc
        except LocalEntryNotFoundError:
            # Offline, or the hub could not be reached: look no further on the network.
            unreachable = True
            continue
        except EntryNotFoundError:
            missing_remote.append(name)
            continue
        except HfHubHTTPError as exc:
            raise fail(f"the hub answered with an error: {_first_line(exc)}", exc) from exc
        except (OSError, ValueError) as exc:
            raise fail(f"{type(exc).__name__}: {_first_line(exc)}", exc) from exc

    listed: list[str] = []
    if any_weights:
        # Fall back to the repository's weight file: from the cache offline, else from its listing.
        try:
            if offline or unreachable:
                folder = snapshot_download(repo_id, cache_dir=cache_dir, token=token, local_files_only=True)
                return find_weights_file(folder)
            from huggingface_hub import HfApi

            files = HfApi(token=token).list_repo_files(repo_id)
            listed = sorted(f for f in files if "/" not in f and Path(f).suffix.lower() in WEIGHT_SUFFIXES)
            safetensors = [f for f in listed if f.lower().endswith(".safetensors")]
            chosen = safetensors if safetensors else listed
            if len(chosen) == 1:
                return Path(hf_hub_download(repo_id, chosen[0], cache_dir=cache_dir, token=token))
        except LocalEntryNotFoundError:
            pass  # nothing cached: reported below
        except WeightsError as exc:  # a cached snapshot without one clear weight file
            raise fail(str(exc), exc) from exc
        except GatedRepoError as exc:
            raise fail("the repository is gated and this account has not been granted access", exc) from exc
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise fail(f"listing the repository failed: {_first_line(exc)}", exc) from exc

    if offline:
        raise fail("offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the local cache")
    if unreachable:
        raise fail("the hub could not be reached and the files are not in the local cache")
    if len(listed) > 1:
        raise fail(
            f"the repository has several weight files ({', '.join(listed)}) and none of the usual names"
        )
    raise fail(f"the repository has none of {', '.join(missing_remote or filenames)}")


# ----------------------------------------------------------------------------------------
# Resolving a weights argument


def resolve_weights(
    weights: str | os.PathLike[str],
    spec: ModelSpec | None,
    *,
    default: Path | None = None,
) -> tuple[Path | None, str]:
    """``(file, source)`` for a ``weights=`` argument; ``file`` is ``None`` for ``"random"``.

    ``"auto"`` means ``default`` (a path the model itself was given as) or else the spec's
    hub repository. A hub repository is downloaded (or found in the cache) here.
    """
    if isinstance(weights, str) and weights == "random":
        return None, "random"
    if isinstance(weights, str) and weights == "auto":
        if default is not None:
            path = find_weights_file(default) if default.is_dir() else default
            return path, str(default)
        if spec is None or spec.hf_id is None:
            name = spec.name if spec else "this model"
            raise WeightsError(f"{name} has no published weights; pass weights=PATH, or weights='random'")
        weights = HUB_PREFIX + spec.hf_id
    if isinstance(weights, str) and weights.startswith(HUB_PREFIX):
        repo_id = weights[len(HUB_PREFIX) :].strip().strip("/")
        if repo_id.count("/") != 1:
            raise WeightsError(f"expected 'hf-hub:ORG/NAME', got {weights!r}")
        own = spec is not None and spec.hf_id is not None and spec.hf_id.lower() == repo_id.lower()
        filenames = spec.hf_filenames if own and spec is not None else _DIR_PREFERRED
        path = download_from_hub(
            repo_id,
            filenames,
            model=spec.name if spec else None,
            gated=bool(own and spec is not None and spec.gated),
        )
        return path, HUB_PREFIX + repo_id
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a string or a path, not {type(weights).__name__}")
    path = Path(weights).expanduser()
    if path.is_dir():
        return find_weights_file(path), str(weights)
    if path.is_file():
        return path, str(weights)
    raise WeightsError(
        f"weights {str(weights)!r} is not an existing file or directory, "
        "'auto', 'random' or 'hf-hub:ORG/NAME'"
    )


# ----------------------------------------------------------------------------------------
# Key mapping


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


def _backbone_prefixes(keys: Sequence[str]) -> list[str]:
    found = {k[: -len(_ANCHOR)] for k in keys if k == _ANCHOR or k.endswith("." + _ANCHOR)}
    return sorted(found, key=lambda p: ("teacher" in p, len(p), p))


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
        grid = tuple(model.patch_embed.grid_size)  # type: ignore[union-attr]
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
) -> ConvertedCheckpoint:
    """Map a loaded checkpoint onto ``backbone`` (and ``heads``), checking every key and shape.

    Looks through nested dicts (:data:`NESTED_KEYS` first) and wrapper prefixes (any prefix
    before ``patch_embed.proj.weight``; non-teacher and shorter first) and takes the first
    backbone that fits exactly. For a ``dinov2`` spec the DINOv2 names are translated and a
    ``pos_embed`` of another size is resampled with :func:`dinov2_interpolate_pos_embed`.
    Head keys (:data:`HEAD_ALIASES`) are returned when ``heads`` is given and present.
    Raises :class:`WeightsError` naming the closest candidate's offending keys.
    """
    target = backbone.state_dict()
    head_target = heads.state_dict() if heads is not None else None
    attempts: list[_Mismatch] = []
    for label, flat in _tensor_dicts(checkpoint):
        head_groups = _split_heads(flat)
        head_keys = {k for k in flat if _HEAD_RE.match(k)}
        for prefix in _backbone_prefixes([k for k in flat if k not in head_keys]):
            where = f"{label}, prefix {prefix!r}" if prefix else label
            sub = {
                k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix) and k not in head_keys
            }
            notes: list[str] = []
            sub = _dinov2_to_timm(sub, backbone, notes, resample=spec.checkpoint_format == "dinov2")
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
    err.mismatches = best.size  # type: ignore[attr-defined]
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
