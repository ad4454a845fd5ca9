"""Model folders: ``model.safetensors`` + ``config.json``, written by :func:`save_model` and
loadable by ``create_model(folder)`` wherever a model is accepted.

``config.json``::

    {"format": "napari-xmag-model", "format_version": 1, "model": "xmag", "heads": true,
     "tiny": false, "overrides": {}, "architecture": "vit_base_patch14_dinov2", ...}

Only ``model`` is required; ``heads``, ``tiny`` and ``overrides`` (architecture shape only,
:data:`~napari_xmag.models.factory.ARCH_OVERRIDE_KEYS`) rebuild the exact architecture.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from .._atomic import OutputExistsError, OutputKind, atomic_path, read_small_json, write_json
from .files import WeightsError, sha256_file
from .registry import UnknownModelError, get_spec

__all__ = [
    "CONFIG_FORMAT", "CONFIG_NAME", "MODEL_FOLDER_KIND", "WEIGHTS_NAME", "read_model_config", "save_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_FORMAT = "napari-xmag-model"
CONFIG_VERSION = 1




def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.json`` of a model folder written by :func:`save_model`, or ``None`` if
    the folder has none or it is not ours (no registered ``"model"``)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    config = read_small_json(path, limit=16 << 20)
    if config is None:
        raise WeightsError(f"cannot read {path}: not a JSON file (or larger than 16 MiB)")
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        return None
    try:
        get_spec(config["model"])
    except UnknownModelError:
        if config.get("format") == CONFIG_FORMAT:
            raise WeightsError(f"{path} names model {config['model']!r}, which is not registered") from None
        return None
    return config


def records_random(config: Mapping[str, Any] | None) -> bool:
    """Whether a model folder's config records random weights: saved from a random model, or
    distilled from a random teacher or start. Such weights stay random when loaded."""
    if not isinstance(config, Mapping):
        return False
    derived = config.get("derived_from")
    return bool(config.get("weights_random") or (isinstance(derived, Mapping) and derived.get("random")))


def save_model(model: Any, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``folder`` as ``model.safetensors`` + ``config.json``, atomically.

    Files go to a temporary sibling folder that is renamed into place, so ``folder`` is
    either absent, the old one or the complete new one. ``create_model(folder)`` loads it.
    """
    from safetensors.torch import save_file  # here: reading a folder's config needs no torch

    folder = Path(folder)
    if MODEL_FOLDER_KIND.is_ours(folder) and not overwrite:
        raise OutputExistsError(errno.EEXIST,
                                f"{folder}: holds a saved model; pass overwrite=True to replace it")
    with atomic_path(folder, MODEL_FOLDER_KIND, overwrite=overwrite) as tmp:  # replaced whole, never half
        tmp.mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
        if model.heads is not None:
            tensors.update(
                {f"heads.{k}": v.detach().cpu().contiguous() for k, v in model.heads.state_dict().items()}
            )
        save_file(
            tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "napari_xmag_model": model.spec.name}
        )
        config = {
            "format": CONFIG_FORMAT,
            "format_version": CONFIG_VERSION,
            "model": model.spec.name,
            "architecture": model.spec.architecture,
            "heads": model.heads is not None,
            "tiny": model.tiny,
            "overrides": model.overrides,
            "embed_dim": model.embed_dim,
            "width": model.width,
            "grid": list(model.grid),
            "native_mpp": model.spec.native_mpp,
            "licence": model.spec.licence,
            "weights_file": WEIGHTS_NAME,
            "sha256": sha256_file(tmp / WEIGHTS_NAME),
            "derived_from": model.weights.to_dict(),
            # random weights, saved, are still random: every model and output made from them says so
            "weights_random": bool(model.weights.random),
            "napari_xmag_version": __version__,
        }
        write_json(tmp / CONFIG_NAME, config)
    return folder


def _is_model_folder(path: Path) -> bool:
    config = read_small_json(path / CONFIG_NAME, limit=16 << 20) if path.is_dir() else None
    return isinstance(config, dict) and config.get("format") == CONFIG_FORMAT


#: What ``save_model`` may replace: a model folder of ours.
MODEL_FOLDER_KIND = OutputKind("model folder", _is_model_folder)


