"""Building models: :func:`create_model` and :func:`build_backbone`.

``create_model`` accepts a registry name, a local path (a file, or a model folder written by
:func:`~napari_xmag.models.folder.save_model`), or ``hf-hub:ORG/NAME``; and weights from
``"auto"``, ``"random"``, a path or ``hf-hub:ORG/NAME``.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _triton  # noqa: F401  # isort: skip  # first: triton bound to its own LLVM
import timm
import torch
from safetensors import safe_open
from torch import nn

from .convert import convert_checkpoint
from .files import WeightsError, find_weights_file, load_checkpoint, sha256_file, tensors_sha256
from .folder import CONFIG_NAME, WEIGHTS_NAME, read_model_config, records_random
from .heads import build_heads
from .hub import HUB_PREFIX, download_from_hub, snapshot_revision
from .model import XmagModel
from .plan import is_local, is_registered, tiny_random_models
from .precision import prepare_model, resolve_device
from .registry import ModelSpec, UnknownModelError, find_spec_by_hf_id, get_spec, list_models
from .weights import WeightsInfo, resolve_weights

__all__ = [
    "ARCH_OVERRIDE_KEYS",
    "RANDOM_SEED",
    "build_backbone",
    "check_overrides",
    "count_parameters",
    "create_model",
    "format_param_count",
    "head_dims",
    "inference_model",
]

#: Layer names usable in ``arch_kwargs`` (data-only specs) -> the classes passed to timm.
_LAYERS: Mapping[str, tuple[str, str]] = {
    "swiglu_packed": ("timm.layers", "SwiGLUPacked"),
    "swiglu": ("timm.layers", "SwiGLU"),
    "mlp": ("timm.layers", "Mlp"),
    "silu": ("torch.nn", "SiLU"),
    "gelu": ("torch.nn", "GELU"),
}
_LAYER_ARGS = ("mlp_layer", "act_layer")
#: The timm arguments a model folder's config.json or a training configuration may set: the
#: shape of the architecture, nothing that names a file, a URL or a callable (timm's
#: ``checkpoint_path`` would torch.load a file, and older timm did so with full unpickling).
ARCH_OVERRIDE_KEYS = frozenset({
    "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
    "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "class_token", "no_embed_class", "reg_tokens",
    "pos_embed", "pre_norm", "final_norm", "fc_norm", "dynamic_img_size", "dynamic_img_pad",
    "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
    "mlp_layer", "act_layer",
})


RANDOM_SEED = 0  # random weights are a fixed draw: the same model in every run

def _layer(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        module, attr = _LAYERS[value]
    except KeyError:
        raise ValueError(f"unknown layer name {value!r}; known: {', '.join(_LAYERS)}") from None
    return getattr(importlib.import_module(module), attr)


def check_overrides(
    overrides: Mapping[str, Any] | None, source: str = "architecture overrides"
) -> dict[str, Any]:
    """Overrides limited to :data:`ARCH_OVERRIDE_KEYS`, with plain JSON values."""
    out = dict(overrides or {})
    refused = sorted(str(k) for k in out if k not in ARCH_OVERRIDE_KEYS)
    if refused:
        raise ValueError(
            f"{source}: refused {', '.join(refused)}: only the architecture's shape may be overridden"
            f" ({', '.join(sorted(ARCH_OVERRIDE_KEYS))}); nothing that loads files or code"
        )
    for key, value in out.items():
        plain = value is None or isinstance(value, (bool, int, float, str)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value))
        if not plain:
            raise ValueError(f"{source}: {key} must be a number, a string or a list of numbers,"
                             f" not {value!r}")
        if key in _LAYER_ARGS and value not in _LAYERS:
            raise ValueError(f"{source}: {key} {value!r} is not one of {', '.join(_LAYERS)}")
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source} must be JSON values (they go into config.json): {exc}") from exc
    return out


def build_backbone(
    spec: ModelSpec,
    *,
    tiny: bool = False,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """The timm backbone of ``spec``, randomly initialised (``device="meta"``: no memory)."""
    kwargs: dict[str, Any] = dict(spec.arch_kwargs)
    if tiny:
        kwargs.update(spec.tiny_kwargs)
    kwargs.update(check_overrides(overrides))
    for key in _LAYER_ARGS:
        if key in kwargs:
            kwargs[key] = _layer(kwargs[key])
    if device is None:
        return timm.create_model(spec.architecture, pretrained=False, **kwargs)
    with torch.device(device):
        return timm.create_model(spec.architecture, pretrained=False, **kwargs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_param_count(n: int) -> str:
    """``85_724_928 -> "86M"``, ``1_134_774_272 -> "1.1B"``."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{round(n / 1e6)}M"


def _width(spec: ModelSpec, tiny: bool) -> int:
    if tiny and "embed_dim" in spec.tiny_kwargs:
        return int(spec.tiny_kwargs["embed_dim"])
    if "embed_dim" in spec.arch_kwargs:
        return int(spec.arch_kwargs["embed_dim"])
    return spec.embed_dim // (2 if spec.embedding == "cls+mean" else 1)


def head_dims(spec: ModelSpec, *, tiny: bool = False, width: int | None = None) -> tuple[int, int]:
    """``(in, out)`` of a distilled student's heads: its width -> its teacher's width."""
    if spec.distilled_from is None:
        raise ValueError(f"{spec.name} is not a distilled student and has no distillation heads")
    teacher = get_spec(spec.distilled_from)
    return (width if width is not None else _width(spec, tiny)), _width(teacher, tiny)


# ----------------------------------------------------------------------------------------
# create_model


def _identify(checkpoint: Any, source: str) -> ModelSpec:
    """The one registered model (full size) whose backbone ``checkpoint`` fits."""
    fits = []
    errors: list[tuple[float, str]] = []
    for name in list_models():
        spec = get_spec(name)
        backbone = build_backbone(spec, device="meta")
        try:
            convert_checkpoint(checkpoint, backbone, spec, source=source)
        except WeightsError as exc:
            errors.append((getattr(exc, "mismatches", math.inf), str(exc)))
            continue
        fits.append(spec)
    shapes = {(s.architecture, json.dumps(dict(s.arch_kwargs), sort_keys=True)) for s in fits}
    if len(fits) > 1 and len(shapes) == 1:
        # the same architecture twice (xmag and DINOv2 ViT-B/14): the first registered, the student
        return fits[0]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise WeightsError(
            f"{source} matches no registered model ({', '.join(list_models())}); pass the model name "
            f"with it, create_model(NAME, weights=PATH). Closest: {min(errors)[1]}"
        )
    raise WeightsError(
        f"{source} fits several models ({', '.join(s.name for s in fits)}); "
        "pass the name with it, create_model(NAME, weights=PATH)"
    )


def _safetensors_model_name(path: Path) -> str | None:
    if path.suffix.lower() != ".safetensors":
        return None
    try:

        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("napari_xmag_model")
    except Exception:
        return None


def _local_reference(path: Path) -> tuple[ModelSpec, dict[str, Any], Path, tuple[Path, Any] | None]:
    """Spec, folder config (or ``{}``), weights location and any checkpoint already read,
    for a model given as a path."""
    if path.is_dir():
        config = read_model_config(path)
        if config is not None:
            return get_spec(config["model"]), config, path, None
        file = find_weights_file(path)
    elif path.is_file():
        file = path
    else:
        raise WeightsError(f"no such file or directory: {path}")
    name = _safetensors_model_name(file)
    if name is not None:
        return get_spec(name), {}, path, None
    checkpoint = load_checkpoint(file)
    spec = _identify(checkpoint, str(file))
    return spec, {}, path, (file, checkpoint)


def create_model(
    name_or_path: str | os.PathLike[str],
    weights: str | os.PathLike[str] = "auto",
    *,
    tiny: bool = False,
    device: str | torch.device = "cpu",
    heads: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    variant: str = "ema",
) -> XmagModel:
    """Build a model in eval mode and load its weights.

    ``name_or_path``: a registry name (see :func:`list_models`), a local weight file or
    model folder, or ``hf-hub:ORG/NAME`` (a registered model's repository or one holding a
    napari-xmag ``config.json``). A registry name wins over a same-named relative path;
    write ``./name`` for the path. A file without our metadata is identified by matching
    its keys and shapes against the registry.

    ``weights``: ``"auto"`` (the path given, else the model's hub repository),
    ``"random"`` (only when asked), a path, or ``hf-hub:ORG/NAME``.

    ``heads``: ``None`` loads distillation heads when the checkpoint has them; ``True``
    always gives a distilled student heads (fresh ones if the checkpoint has none);
    ``False`` never. ``tiny`` builds the spec's small test configuration. ``variant``: of a
    training checkpoint holding two students (the official trainer's ``student_ema.model.*``
    and ``student.model.*``), the EMA one (default: what XMAG releases) or ``"student"``;
    ``model.weights.location`` says which was taken.

    With ``XMAG_MODELS=tiny-random`` in the environment (:data:`MODELS_ENV`), every model not
    given as a local path is built in its tiny configuration with random weights, recorded as
    such: the documented way to try any command (the docs' examples, the tests) without weights.
    """
    overrides = check_overrides(overrides)
    if tiny_random_models() and not is_local(name_or_path):
        tiny = True
        if not is_local(weights):
            weights = "random"
    default_weights: Path | None = None
    config: dict[str, Any] = {}
    preloaded: tuple[Path, Any] | None = None
    ref = os.fspath(name_or_path)

    if isinstance(name_or_path, str) and name_or_path.startswith(HUB_PREFIX):
        repo_id = name_or_path[len(HUB_PREFIX) :].strip().strip("/")
        found = find_spec_by_hf_id(repo_id)
        if found is not None:
            spec = found
            if weights == "auto":
                weights = HUB_PREFIX + repo_id
        else:
            folder = download_from_hub(repo_id, (CONFIG_NAME,), any_weights=False).parent
            config = read_model_config(folder) or {}
            if not config:
                raise WeightsError(
                    f"{name_or_path} is neither a registered model's repository nor a napari-xmag model "
                    f"(its config.json names no registered model); registered: {', '.join(list_models())}"
                )
            spec = get_spec(config["model"])
            if weights == "auto":
                weights = str(
                    download_from_hub(repo_id, (config.get("weights_file", WEIGHTS_NAME),), any_weights=False)
                )
    elif isinstance(name_or_path, str) and is_registered(name_or_path):
        spec = get_spec(name_or_path)
    elif Path(ref).expanduser().exists():
        spec, config, default_weights, preloaded = _local_reference(Path(ref).expanduser())
    else:
        raise UnknownModelError(
            f"{ref!r} is not a registered model, an existing path or 'hf-hub:ORG/NAME'; "
            f"registered models: {', '.join(list_models())}"
        )

    if config:
        tiny = bool(config.get("tiny", tiny))
        overrides = {**check_overrides(config.get("overrides"), f"{ref}: config.json overrides"), **overrides}
        if heads is None and config.get("heads"):
            heads = True
    if heads and spec.distilled_from is None:
        raise ValueError(f"{spec.name} is not a distilled student and has no distillation heads")

    target_device = resolve_device(device)
    file, source = resolve_weights(weights, spec, default=default_weights)

    if file is None:  # random, explicitly asked for; seeded, so runs and reruns agree
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            backbone = build_backbone(spec, tiny=tiny, overrides=overrides)
            head_modules = _new_heads(spec, tiny, backbone) if heads else None
        info = WeightsInfo("random", None, True, heads="random" if head_modules is not None else None)
    else:
        checkpoint = preloaded[1] if preloaded and preloaded[0] == file else load_checkpoint(file)
        backbone = build_backbone(spec, tiny=tiny, overrides=overrides, device="meta")
        head_modules = (
            _new_heads(spec, tiny, backbone) if heads is not False and spec.distilled_from else None
        )
        converted = convert_checkpoint(checkpoint, backbone, spec, source=str(file), heads=head_modules,
                                       variant=variant)
        _load_into(backbone, converted.backbone, str(file))
        heads_origin = None
        if head_modules is not None:
            if converted.heads is not None:
                head_modules.load_state_dict(converted.heads, strict=True)
                heads_origin = "checkpoint"
            elif heads:
                if config.get("heads"):
                    raise WeightsError(
                        f"{file}: config.json promises distillation heads but the file has none"
                    )
                heads_origin = "random"
            else:
                head_modules = None
        # a folder that records random weights (saved from a random model, or distilled from a
        # random teacher) stays random, though its weights now come from a file: whether it was
        # given as the model or as the weights
        derived_random = records_random(config) or records_random(read_model_config(file.parent))
        info = WeightsInfo(source, sha256_file(file), derived_random, path=str(file), heads=heads_origin,
                           location=converted.location, tensors_sha256=tensors_sha256(file),
                           revision=snapshot_revision(file))

    model = XmagModel(spec, backbone, weights=info, heads=head_modules, tiny=tiny, overrides=overrides)
    return model.to(target_device).eval()


def _new_heads(spec: ModelSpec, tiny: bool, backbone: nn.Module) -> nn.ModuleDict:
    vit: Any = backbone  # a timm VisionTransformer: its attributes are not typed
    in_dim, out_dim = head_dims(spec, tiny=tiny, width=int(vit.embed_dim))
    return build_heads(in_dim, out_dim)


def _load_into(backbone: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load an exactly fitting state dict into a backbone built on the meta device."""
    try:
        backbone.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:  # pragma: no cover - convert_checkpoint has checked keys and shapes
        raise WeightsError(f"{source}: {exc}") from exc
    left = [n for n, t in [*backbone.named_parameters(), *backbone.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - a backbone with state outside its state dict
        raise WeightsError(f"{source}: {len(left)} tensors not set by the checkpoint, e.g. {left[:3]}")
    backbone.float()


def inference_model(
    name_or_path: Any, weights: Any = "auto", *, device: str = "auto", precision: str = "auto", **kwargs: Any
) -> Any:
    """``create_model`` then :func:`prepare_model`, keeping only the converted model: the fp32
    weights are let go at once (-340 MB for an int8 ViT-B). What ``xmag embed`` and every batch
    worker build."""
    model, _, _ = prepare_model(create_model(name_or_path, weights=weights, **kwargs), device, precision)
    gc.collect()  # timm modules hold reference cycles: the dropped fp32 model goes only now
    return model
