"""The frozen teacher: its CLS vectors for batches of crops (its identity is
:func:`napari_xmag.provenance.model_identity`).

The teacher has no head and never trains: it runs in eval mode under
``torch.inference_mode``, in chunks so that a batch of 32 pairs x 2 views x 16 crops does
not have to fit the GPU at once.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["autocast", "embed_crops", "freeze"]


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or nothing for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def embed_crops(
    teacher: Any, crops: torch.Tensor, *, chunk: int = 256, amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Pooled teacher embeddings of uint8 crops ``(..., C, C, 3)`` -> ``(..., D)`` float32.

    The result is an ordinary tensor (cloned out of inference mode) so that it can be used as a
    target in a loss that autograd differentiates.
    """
    lead = crops.shape[:-3]
    flat = crops.reshape(-1, *crops.shape[-3:])
    with torch.inference_mode(), autocast(teacher.device, amp_dtype):
        out = [teacher.embed(teacher.preprocess(flat[start : start + chunk])).float()
               for start in range(0, len(flat), chunk)]
    cls = torch.cat(out) if out else torch.zeros(0, teacher.embed_dim, device=teacher.device)
    return cls.reshape(*lead, cls.shape[-1]).clone()
