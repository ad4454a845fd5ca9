"""Where weights come from: a ``weights=`` argument resolved to a file, and what is recorded of it.

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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import DIR_PREFERRED, WeightsError, find_weights_file
from .hub import HUB_PREFIX, download_from_hub
from .registry import ModelSpec

__all__ = ["WeightsError", "WeightsInfo", "resolve_weights"]


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
    location: str | None = None  # where in the file the backbone was found (the EMA student, ...)
    tensors_sha256: str | None = None  # of the tensors, not the file (files.tensors_sha256)
    revision: str | None = None  # the hub commit the file came from

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "random": self.random, "path": self.path}




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
        filenames = spec.hf_filenames if own and spec is not None else DIR_PREFERRED
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


