"""Gated-attention MIL (ABMIL, Ilse et al. 2018) on bags of patch features.

A slide is a bag of N patch embeddings h_i. The model scores each patch with gated
attention, a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i))), pools z = sum_i a_i h_i and
classifies z. The attention weights are the heatmap.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .._atomic import OutputKind, atomic_path

__all__ = [
    "ABMIL",
    "ABMILSettings",
    "class_weights",
    "load_abmil",
    "predict_bag",
    "save_abmil",
    "seeded",
    "train_abmil",
]


class ABMIL(nn.Module):
    """Gated-attention MIL over one bag ``(N, in_dim)`` -> ``(logits (K,), attention logits (N,))``.

    Features are first standardised with a per-dimension mean and std held as buffers (set
    from the training bags by :meth:`set_input_norm`, saved with the head): foundation-model
    embeddings share a large common component and their scales differ by orders of
    magnitude, and without it the same learning rate does not suit them all. Then
    ``in_dim -> hidden`` (Linear, ReLU, dropout) embeds each patch; the gated attention has
    ``attn_dim`` units; the classifier is linear on the pooled ``hidden`` vector.
    """

    def __init__(
        self, in_dim: int, hidden: int = 256, attn_dim: int = 128, n_classes: int = 2, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.config = {
            "in_dim": in_dim, "hidden": hidden, "attn_dim": attn_dim,
            "n_classes": n_classes, "dropout": dropout,
        }
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attn_dim)  # tanh branch
        self.attention_u = nn.Linear(hidden, attn_dim)  # sigmoid gate
        self.attention_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if bag.ndim != 2 or bag.shape[0] == 0:
            raise ValueError(f"ABMIL takes one non-empty bag (N, in_dim), got shape {tuple(bag.shape)}")
        h = self.embed((bag - self.input_mean) / self.input_std)
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h)))[:, 0]
        weights = torch.softmax(scores, dim=0)
        pooled = weights @ h
        return self.classifier(pooled), scores


    @torch.no_grad()
    def set_input_norm(self, features: np.ndarray | torch.Tensor) -> None:
        """Standardise inputs with the mean and std of ``features`` (all training patches).

        The std is floored at 1 % of the mean std and at 0.1 % of the features' RMS: a
        dimension that barely varies in training (or an embedding that hardly depends on its
        input, as a random DINOv2 class token, whose blocks start near identity) would
        otherwise turn float noise, or the drift of a student being fine-tuned, into huge
        inputs.
        """
        x = torch.as_tensor(np.asarray(features, np.float32)).double()
        std = x.std(0, correction=0)
        floor = max(0.01 * float(std.mean()), 1e-3 * float(x.square().mean().sqrt()), 1e-6)
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(std.clamp_min(floor))


@dataclass(frozen=True)
class ABMILSettings:
    """Model size and training of an ABMIL head. One bag per step (bags differ in size)."""

    hidden: int = 256
    attn_dim: int = 128
    dropout: float = 0.25
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    max_patches: int | None = None  # random sub-bag per training step; None: the whole bag
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0:
            raise ValueError("epochs and learning rate must be positive")
        if self.max_patches is not None and self.max_patches < 1:
            raise ValueError(f"max_patches must be positive, got {self.max_patches}")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and ask for deterministic algorithms; restore both after."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """N / (K * count_c): each class weighs the same in the loss (sklearn's "balanced")."""
    counts = np.bincount(np.asarray(y), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def train_abmil(
    bags: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    settings: ABMILSettings | None = None,
    seed: int = 0,
) -> tuple[ABMIL, list[float]]:
    """Train an ABMIL head on feature bags with AdamW and class-weighted cross-entropy.

    Each epoch visits every bag once in a seeded random order; the model of the last epoch
    is returned (no validation split: with tens of slides one cannot afford it), with the
    mean loss of each epoch.
    """
    settings = settings or ABMILSettings()
    device = torch.device(settings.device)
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(seed)
    with seeded(seed):
        model = ABMIL(
            int(bags[0].shape[1]), settings.hidden, settings.attn_dim, n_classes, settings.dropout
        )
        model.set_input_norm(np.concatenate(bags))
        model = model.to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        weight = class_weights(y, n_classes).to(device)
        targets = torch.as_tensor(y, device=device)
        history = []
        model.train()
        for _ in range(settings.epochs):
            losses = []
            for i in rng.permutation(len(bags)):
                bag = bags[i]
                if settings.max_patches is not None and len(bag) > settings.max_patches:
                    bag = bag[np.sort(rng.choice(len(bag), settings.max_patches, replace=False))]
                logits, _ = model(torch.as_tensor(np.asarray(bag, np.float32), device=device))
                loss = F.cross_entropy(logits[None], targets[i : i + 1], weight=weight)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
            history.append(float(np.mean(losses)))
    return model.eval(), history


@torch.inference_mode()
def predict_bag(model: ABMIL, bag: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities (K,), attention weights (N,) and attention logits (N,) of one bag."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(bag, np.float32), device=device) if isinstance(bag, np.ndarray) else bag
    logits, scores = model(x.to(device, torch.float32))
    return (
        torch.softmax(logits.float(), 0).cpu().numpy(),
        torch.softmax(scores.float(), 0).cpu().numpy(),
        scores.float().cpu().numpy(),
    )


ABMIL_FORMAT = "napari-xmag-abmil"


def _is_abmil_file(path: Path) -> bool:
    try:

        if not path.is_file():
            return False
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == ABMIL_FORMAT
    except Exception:  # any file at all: not ours
        return False


#: What ``save_abmil`` may replace: an ABMIL head of ours.
ABMIL_KIND = OutputKind("ABMIL head", _is_abmil_file)


def save_abmil(
    model: ABMIL, path: str | os.PathLike[str], classes: Sequence[str] | None = None, *,
    overwrite: bool = False,
) -> Path:
    """Write the head as safetensors, its config (and class names) in the file's metadata."""
    path = Path(path)
    metadata = {"format": ABMIL_FORMAT, "config": json.dumps(model.config),
                "classes": json.dumps(list(classes or []))}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, ABMIL_KIND, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata)
    return path


def load_abmil(path: str | os.PathLike[str], device: str = "cpu") -> tuple[ABMIL, list[str]]:
    """A head written by :func:`save_abmil`, in eval mode, and its class names."""
    with safe_open(str(path), framework="pt") as f:
        metadata: dict[str, Any] = f.metadata() or {}
    if metadata.get("format") != ABMIL_FORMAT:
        raise ValueError(f"{path}: not an ABMIL head written by napari-xmag")
    model = ABMIL(**json.loads(metadata["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), json.loads(metadata.get("classes", "[]"))


def settings_dict(settings: ABMILSettings) -> dict[str, Any]:
    return asdict(settings)
