"""What a model reference will be, before it is built (no torch): so that a command can skip
finished slides, or refuse a bad reference, without the seconds a model takes to build.

``create_model(name, weights)`` records an identity in every output it makes
(:func:`~napari_xmag.provenance.model_identity`); :func:`planned_identity` says what that
identity will be for the references whose weights are known without loading them: a registered
model with random weights, with its hub weights (found in the cache, or downloaded: they are
needed anyway), or with a weights file. A model given as a path identifies itself by its
contents, so its plan is None: build it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .files import tensors_sha256
from .folder import read_model_config, records_random
from .hub import HUB_PREFIX
from .registry import UnknownModelError, get_spec
from .weights import resolve_weights

__all__ = [
    "MODELS_ENV", "declared_random", "is_local", "is_registered", "planned_identity", "tiny_random_models",
]

#: ``XMAG_MODELS=tiny-random``: tiny random models for every registered name (create_model).
MODELS_ENV = "XMAG_MODELS"


def tiny_random_models() -> bool:
    """Whether ``XMAG_MODELS=tiny-random`` asks for tiny random models (see ``create_model``)."""
    return os.environ.get(MODELS_ENV, "").strip().lower() == "tiny-random"


def is_registered(name: str) -> bool:
    try:
        get_spec(name)
    except UnknownModelError:
        return False
    return True


def is_local(ref: Any) -> bool:
    """A reference to a file or folder here (not a registered name, a hub id, auto or random)."""
    named = isinstance(ref, str) and (ref in ("auto", "random") or ref.startswith(HUB_PREFIX))
    if named or (isinstance(ref, str) and is_registered(ref)):
        return False
    return Path(os.fspath(ref)).expanduser().exists()


def planned_identity(name_or_path: str | os.PathLike[str], weights: str | os.PathLike[str] = "auto"
                     ) -> dict[str, Any] | None:
    """The identity keys ``create_model(name_or_path, weights)`` will record (model, tiny,
    weights source, the tensors' sha256, random), or None when only building the model can tell."""
    tiny = False
    if tiny_random_models() and not is_local(name_or_path):
        tiny = True
        if not is_local(weights):
            weights = "random"
    if not isinstance(name_or_path, str) or not is_registered(name_or_path):
        return None
    spec = get_spec(name_or_path)
    file, source = resolve_weights(weights, spec)
    return {
        "model": spec.name,
        "tiny": tiny,
        "weights_source": source if file is not None else "random",
        # the tensors' hash identifies the weights (the file's, ``weights_sha256``, is left to the
        # built model: hashing both would read the weights twice to skip a finished slide)
        "weights_tensors_sha256": tensors_sha256(file) if file is not None else "",
        "weights_random": file is None or records_random(read_model_config(file.parent)),
    }


def declared_random(name_or_path: str | os.PathLike[str], weights: str | os.PathLike[str] = "auto") -> bool:
    """Whether the model a command will build has random weights, known before building it:
    ``weights="random"``, ``XMAG_MODELS=tiny-random``, or a model folder whose config.json records
    random weights (saved from a random model, or distilled from a random teacher)."""
    if weights == "random" or (tiny_random_models() and not is_local(name_or_path)):
        return True
    folders = [Path(os.fspath(ref)).expanduser() for ref in (name_or_path, weights) if ref != "auto"]
    return any(records_random(read_model_config(f)) for f in folders if f.is_dir())
