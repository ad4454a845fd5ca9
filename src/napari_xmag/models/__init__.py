"""The model zoo, split the timm way: one job per module, one model API for every model.

* ``registry`` (:class:`ModelSpec`, look-ups) and ``zoo`` (the entries): data only;
* ``heads``, ``model`` (:class:`XmagModel`: preprocess, forward_features, embed);
* ``files`` (reading weight files safely), ``hub`` (the Hugging Face Hub), ``convert``
  (checkpoint keys onto timm), ``weights`` (a ``weights=`` argument to a file);
* ``precision`` (devices, the precision vocabulary, CPU conversions), ``folder`` (model
  folders), ``factory`` (:func:`create_model`).

>>> from napari_xmag.models import create_model, list_models
>>> model = create_model("xmag", weights="random", tiny=True)   # doctest: +SKIP
>>> pooled, grid = model.embed(model.preprocess(batch_uint8), tokens=True)  # doctest: +SKIP

Names are imported on first use: ``napari_xmag.models.registry`` (and the zoo) work without
importing torch; everything that builds or runs a model imports it.
"""

from importlib import import_module
from typing import Any

from . import zoo as _zoo  # noqa: F401  (registers the entries: data only, no torch)

_LAZY = {
    "ARCH_OVERRIDE_KEYS": "factory",
    "build_backbone": "factory",
    "check_overrides": "factory",
    "count_parameters": "factory",
    "create_model": "factory",
    "format_param_count": "factory",
    "head_dims": "factory",
    "CONFIG_FORMAT": "folder",
    "CONFIG_NAME": "folder",
    "MODEL_FOLDER_KIND": "folder",
    "WEIGHTS_NAME": "folder",
    "read_model_config": "folder",
    "save_model": "folder",
    "HEAD_NAMES": "heads",
    "DistillationHead": "heads",
    "build_heads": "heads",
    "XmagModel": "model",
    "ModelSpec": "registry",
    "UnknownModelError": "registry",
    "find_spec_by_hf_id": "registry",
    "get_spec": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "WEIGHT_SUFFIXES": "files",
    "WeightsError": "files",
    "load_checkpoint": "files",
    "sha256_file": "files",
    "WeightsInfo": "weights",
    "resolve_weights": "weights",
    "convert_checkpoint": "convert",
    "dinov2_interpolate_pos_embed": "convert",
    "PRECISIONS": "precision",
    "check_precision": "precision",
    "inference_model": "factory",
    "prepare_model": "precision",
    "resolve_device": "precision",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
