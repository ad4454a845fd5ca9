"""What made an output: which model and weights, and whether those weights are random.

Said one way everywhere: every features file, map, comparison, cache and manifest records
:func:`model_identity`; every name and message about random weights uses the tags below. No
torch here (models are duck-typed), so maps and widgets use it without loading one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "RANDOM_WEIGHTS",
    "RANDOM_WEIGHTS_TAG",
    "model_identity",
    "random_weights_warning",
    "same_weights_keys",
    "tagged_name",
]

#: In layer names, captions and tables: ``PCA · CMU-1-Small-Region · random weights``.
RANDOM_WEIGHTS = "random weights"
#: In file and folder names, where spaces are awkward: ``features-RANDOM-WEIGHTS/``.
RANDOM_WEIGHTS_TAG = "RANDOM-WEIGHTS"


def tagged_name(name: str, random: bool) -> str:
    """A layer or caption name that says when its numbers come from random weights."""
    return f"{name} · {RANDOM_WEIGHTS}" if random else name


def random_weights_warning(what: str = "the embeddings", side: str | None = None) -> str:
    """The one warning a command prints when it runs on random weights (``side``: which model)."""
    who = f" ({side})" if side else ""
    return (f"warning: RANDOM WEIGHTS{who}: {what} carry no meaning (for trying the plumbing only;"
            " recorded in every output)")


def model_identity(model: Any) -> dict[str, Any]:
    """What makes two models the same model: name, architecture options and exact weights."""
    weights = model.weights
    return {
        "model": model.spec.name,
        "tiny": bool(getattr(model, "tiny", False)),
        "overrides": dict(getattr(model, "overrides", {}) or {}),
        "embed_dim": int(model.embed_dim),
        "weights_source": weights.source,
        "weights_sha256": weights.sha256 or "",
        # the tensors' hash: a re-exported file of the same weights is the same model
        "weights_tensors_sha256": getattr(weights, "tensors_sha256", None) or "",
        "weights_revision": getattr(weights, "revision", None) or "",
        "weights_random": bool(weights.random),
        "weights_heads": weights.heads,
    }


def same_weights_keys(keys: Mapping[str, Any], existing: Mapping[str, Any]) -> dict[str, Any]:
    """``keys`` (identity values of this run) less what need not match ``existing`` (what an
    output records) for the two to be the same weights: when both record the weight tensors'
    hash, the file they came from does not matter (a re-exported file is the same model); an
    output made before that hash existed is compared by its file hash instead."""
    keys = dict(keys)
    if existing.get("weights_tensors_sha256") and keys.get("weights_tensors_sha256"):
        keys.pop("weights_sha256", None)
        keys.pop("weights_source", None)
    elif not existing.get("weights_tensors_sha256"):
        keys.pop("weights_tensors_sha256", None)
    return keys
