"""The student during fine-tuning: which blocks train, checkpointing, and what memory it takes."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .data import MILError

__all__ = [
    "activation_bytes_estimate",
    "checkpointed",
    "measure_step_memory",
    "peak_rss",
    "set_trainable",
    "train_mode",
]


def set_trainable(student: Any, blocks: int, distill: bool) -> list[torch.nn.Parameter]:
    """Freeze the student but its last ``blocks`` blocks and final norm (and heads if distilling)."""
    depth = len(student.backbone.blocks)
    if blocks > depth:
        raise MILError(f"--blocks {blocks}: the student has {depth} transformer blocks")
    student.requires_grad_(False)
    trained = [*student.backbone.blocks[depth - blocks :], student.backbone.norm]
    if distill:
        trained.append(student.heads)
    for module in trained:
        module.requires_grad_(True)
    return [p for p in student.parameters() if p.requires_grad]


def train_mode(student: Any, blocks: int) -> None:
    # Frozen layers and the heads stay in eval mode: the heads' BatchNorm keeps its running
    # statistics, since a step's patches come from one slide and are not a representative batch.
    student.eval()
    for block in student.backbone.blocks[len(student.backbone.blocks) - blocks :]:
        block.train()


@contextlib.contextmanager
def checkpointed(student: Any, blocks: int, enabled: bool) -> Iterator[None]:
    """Run the trained blocks under activation checkpointing, without renaming their weights.

    Non-reentrant checkpointing: the first trained block's input does not require grad (the
    frozen blocks made it), which the reentrant variant would answer with no gradients.
    """
    if not enabled:
        yield
        return

    wrapped = student.backbone.blocks[len(student.backbone.blocks) - blocks :]
    for block in wrapped:
        plain = block.forward
        block.forward = lambda x, *a, _f=plain, **k: checkpoint(_f, x, *a, use_reentrant=False, **k)
    try:
        yield
    finally:
        for block in wrapped:
            del block.forward  # back to the class's forward


# ---- memory -------------------------------------------------------------------------------
def tokens_per_patch(model: Any) -> int:
    gh, gw = model.grid
    return gh * gw + model.num_prefix_tokens


def mlp_ratio(model: Any) -> float:
    fc1 = model.backbone.blocks[0].mlp.fc1
    return fc1.out_features / fc1.in_features


def activation_bytes_estimate(
    n_patches: int,
    blocks: int,
    *,
    tokens: int = 257,
    width: int = 768,
    mlp_ratio: float = 4.0,
    bytes_per_value: int = 4,
    checkpointing: bool = False,
) -> int:
    """Bytes of activations a training step holds for ``blocks`` trained ViT blocks.

    In units of one token grid per patch, ``u = tokens * width * bytes_per_value``, a timm
    ViT block with fused attention saves ``10 + 2 * mlp_ratio`` u for its backward pass (18 u
    at mlp_ratio 4: q, k and v 3 u; the inputs of norm1, qkv, proj, ls1, norm2, fc1 and ls2
    1 u each; fc1's output and the GELU's at mlp_ratio u each), the final norm and the
    token outputs 2 u more; frozen blocks keep nothing. With checkpointing a trained block
    keeps only its input (1 u), and the backward pass rebuilds one block's 18 u at a time.
    These are the counts :func:`measure_step_memory` finds with saved-tensor hooks.
    """
    unit = tokens * width * bytes_per_value * n_patches
    block = (10 + 2 * mlp_ratio) * unit
    if checkpointing:
        return int((blocks + 2) * unit + block)
    return int(blocks * block + 2 * unit)


def measure_step_memory(
    student: Any, n_patches: int, blocks: int, *, checkpointing: bool = False
) -> dict[str, int]:
    """Measure one forward + backward of the student's ``blocks`` last blocks on random input.

    ``saved_bytes``: activations autograd keeps (tensors saved for backward, parameters
    excluded, each storage once), counted with saved-tensor hooks (with checkpointing, the
    hooks see only what the checkpoint keeps). ``peak_rss_bytes``: the process's peak resident
    memory during the step above its resident memory before it (Linux only, else -1).
    """
    model = copy.deepcopy(student)
    set_trainable(model, blocks, distill=False)
    train_mode(model, blocks)
    h, w = model.input_size
    x = torch.randn(n_patches, 3, h, w)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    before = _reset_peak_rss()
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, checkpointed(model, blocks, checkpointing):
        cls, grid = model.embed(x, tokens=True)
        (cls.square().mean() + grid.square().mean()).backward()
    peak = peak_rss()
    return {"saved_bytes": sum(saved.values()),
            "peak_rss_bytes": peak - before if before >= 0 and peak >= 0 else -1}


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux); return the current RSS, or -1.

    Freed memory that the allocator still holds would be reused by the step unseen, so it is
    handed back to the system first (glibc ``malloc_trim``).
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (since the last reset on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
