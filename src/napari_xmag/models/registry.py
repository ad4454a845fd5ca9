"""The model registry: one frozen :class:`ModelSpec` per model, looked up by name.

A spec is pure data (strings, numbers, tuples), so it pickles to workers and writes to JSON.
It says which timm constructor builds the backbone and with which arguments, what the
backbone returns, how its inputs are normalised, where its weights live and under which
terms. Building lives in :mod:`napari_xmag.models.factory`; weights in
:mod:`napari_xmag.models.weights`; the entries in :mod:`napari_xmag.models.zoo`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "CHECKPOINT_FORMATS",
    "EMBEDDING_KINDS",
    "ModelSpec",
    "UnknownModelError",
    "find_spec_by_hf_id",
    "get_spec",
    "list_models",
    "register_model",
]

EmbeddingKind = Literal["cls", "cls+mean"]
#: How a pooled embedding is made from the final-norm tokens.
#: ``cls``: the class token. ``cls+mean``: the class token concatenated with the mean of the
#: patch tokens (register tokens excluded), twice the backbone width.
EMBEDDING_KINDS: tuple[str, ...] = ("cls", "cls+mean")
#: Key naming a checkpoint for the model may use. ``timm``: the timm module names exactly.
#: ``dinov2``: the DINOv2 reference code's names (mask token, chunked blocks, a pos_embed
#: sized for another resolution, resampled with DINOv2's run-time rule); timm names also load.
CHECKPOINT_FORMATS: tuple[str, ...] = ("timm", "dinov2")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownModelError(KeyError, ValueError):
    """A model name that is not in the registry; the message lists the known names.

    A ``KeyError`` for registry look-ups and a ``ValueError`` for callers that treat bad
    user input as one."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about one model before any weight is loaded.

    ``architecture`` and ``arch_kwargs`` go to ``timm.create_model`` unchanged, except that
    layer names (``"swiglu_packed"``, ``"silu"``) are turned into the classes they name.
    ``tiny_kwargs`` override ``arch_kwargs`` for the small configuration the tests build:
    the same constructor and the same embedding code, a fraction of the size.
    """

    name: str
    architecture: str
    embed_dim: int
    grid: tuple[int, int]
    patch_size: int
    img_size: int
    native_mpp: float
    licence: str
    gated: bool
    commercial_use: bool
    hf_id: str | None
    param_count: str
    embedding: EmbeddingKind = "cls"
    num_register_tokens: int = 0
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    tiny_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: Key naming of published checkpoints, one of :data:`CHECKPOINT_FORMATS`.
    checkpoint_format: str = "timm"
    #: Files tried, in order, in the hub repository.
    hf_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    #: For a distilled student: the registry name of its teacher. The model then carries a
    #: "global" and a "local" distillation head from its width to the teacher's.
    distilled_from: str | None = None
    role: Literal["student", "teacher"] = "teacher"
    description: str = ""
    licence_note: str = ""

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDING_KINDS:
            raise ValueError(
                f"{self.name}: embedding must be one of {EMBEDDING_KINDS}, not {self.embedding!r}"
            )
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"{self.name}: checkpoint_format must be one of {CHECKPOINT_FORMATS}")
        if self.img_size % self.patch_size:
            raise ValueError(f"{self.name}: img_size {self.img_size} is not a multiple of {self.patch_size}")
        expected = (self.img_size // self.patch_size,) * 2
        if tuple(self.grid) != expected:
            raise ValueError(
                f"{self.name}: grid {self.grid} does not follow from {self.img_size}/{self.patch_size}"
            )

    @property
    def hub_url(self) -> str | None:
        """The model card's address, or ``None`` for a model with no hub repository."""
        return f"https://huggingface.co/{self.hf_id}" if self.hf_id else None

    @property
    def num_prefix_tokens(self) -> int:
        """Class token plus register tokens, the tokens before the patch grid."""
        return 1 + self.num_register_tokens

    def embed_dim_for(self, width: int) -> int:
        """The pooled embedding size of a backbone ``width`` wide, by this spec's rule."""
        return 2 * width if self.embedding == "cls+mean" else width

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists)."""
        out = asdict(self)
        out["arch_kwargs"] = dict(self.arch_kwargs)
        out["tiny_kwargs"] = dict(self.tiny_kwargs)
        return out


_REGISTRY: dict[str, ModelSpec] = {}


def _entries() -> dict[str, ModelSpec]:
    """The registry (the package's ``__init__`` has imported the zoo, which fills it)."""
    return _REGISTRY


def _key(name: str) -> str:
    return name.strip().lower()


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry under its (case-insensitive) name; names are unique."""
    key = _key(spec.name)
    if key in _REGISTRY:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _REGISTRY[key] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The spec registered as ``name`` (case-insensitive)."""
    try:
        return _entries()[_key(name)]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; registered models: {known}") from None


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names in registration order, optionally filtered by a glob ``pattern``."""
    names = [spec.name for spec in _entries().values()]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower())]
    return names


def find_spec_by_hf_id(hf_id: str) -> ModelSpec | None:
    """The registered spec whose hub repository is ``hf_id`` (case-insensitive), if any."""
    wanted = hf_id.strip().lower()
    for spec in _entries().values():
        if spec.hf_id is not None and spec.hf_id.lower() == wanted:
            return spec
    return None
