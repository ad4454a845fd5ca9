"""The model zoo: registry, factory, weight sources and the one model API.

>>> from napari_xmag.models import create_model, list_models
>>> model = create_model("xmag", weights="random", tiny=True)   # doctest: +SKIP
>>> pooled, grid = model.embed(model.preprocess(batch_uint8), tokens=True)  # doctest: +SKIP

No napari or Qt here; torch and timm are imported with this package.
"""

from . import zoo as _zoo  # noqa: F401  (registers the entries)
from .factory import (
    CONFIG_FORMAT,
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_backbone,
    count_parameters,
    create_model,
    format_param_count,
    head_dims,
    read_model_config,
    resolve_device,
    save_model,
)
from .heads import HEAD_NAMES, DistillationHead, build_heads
from .model import XmagModel
from .registry import ModelSpec, UnknownModelError, find_spec_by_hf_id, get_spec, list_models, register_model
from .weights import (
    WeightsError,
    WeightsInfo,
    convert_checkpoint,
    dinov2_interpolate_pos_embed,
    load_checkpoint,
    sha256_file,
)

__all__ = [
    "CONFIG_FORMAT",
    "CONFIG_NAME",
    "HEAD_NAMES",
    "WEIGHTS_NAME",
    "DistillationHead",
    "ModelSpec",
    "UnknownModelError",
    "WeightsError",
    "WeightsInfo",
    "XmagModel",
    "build_backbone",
    "build_heads",
    "convert_checkpoint",
    "count_parameters",
    "create_model",
    "dinov2_interpolate_pos_embed",
    "find_spec_by_hf_id",
    "format_param_count",
    "get_spec",
    "head_dims",
    "list_models",
    "load_checkpoint",
    "read_model_config",
    "register_model",
    "resolve_device",
    "save_model",
    "sha256_file",
]
