"""Where and how a model runs: the device, and the one precision vocabulary of every command.

``--precision`` takes the same words everywhere (:data:`PRECISIONS`); what each means depends on
the device and on whether the model is trained or only run (:func:`check_precision` refuses a
word that does not apply, saying what to use instead):

==========  ===================================  =====================================
precision   inference (embed, compare, maps)     training (distill, finetune)
==========  ===================================  =====================================
``auto``    GPU: autocast bf16 (fp16 without     GPU: autocast bf16 (fp16 + GradScaler
            bf16). CPU: this CPU's fastest of    without bf16). CPU: autocast bf16 where
            bf16 / int8 / fp32, measured once    auto picks bf16 for inference, else
            (:mod:`.cpu_precision`)              fp32
``fp32``    full precision                       full precision
``bf16``    CPU: weights cast to bf16; GPU:      autocast bf16
            autocast bf16
``fp16``    GPU only: autocast fp16              GPU only: autocast fp16 + GradScaler
``int8``    CPU only: dynamic quantisation of    refused (inference only)
            the Linear layers
==========  ===================================  =====================================

``auto`` is the default of every command and widget. What it resolved to is recorded in every
output (``precision``, beside ``precision_requested``). Random weights run ``auto`` at fp32: they
are for trying the plumbing, and DINOv2's initial layer scale (1e-5) puts each block's output
below bf16's resolution, so every patch would get the same class token.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .cpu_precision import auto_cpu_precision, convert_for_cpu

__all__ = [
    "PRECISIONS",
    "check_precision",
    "convert_for_cpu",
    "inference_precision",
    "prepare_model",
    "resolve_device",
    "training_autocast",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else MPS, else CPU; or the named device, checked to exist."""
    import torch  # in each function: the precision vocabulary is read without torch (embed settings)

    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {name!r} asked for, but MPS is not available here; use 'cpu' or 'auto'")
    return device




def check_precision(precision: str, use: str, device: torch.device | None = None) -> str:
    """``precision`` if it applies to ``use`` ("inference" or "training") on ``device``, with
    ``auto`` resolved; a ValueError saying what to use otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and use == "training":
        raise ValueError("int8 is for inference (embedding) only; train with auto, bf16 or fp32")
    if device is None:
        return precision
    accelerator = device.type != "cpu"
    if precision == "auto":
        if not accelerator:
            chosen = auto_cpu_precision()
            return chosen if use == "inference" or chosen == "bf16" else "fp32"
        import torch  # only with a device, which means torch is in use already

        bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
        return "bf16" if bf16 else "fp16"
    if precision == "fp16" and not accelerator:
        raise ValueError("fp16 runs on a GPU; on a CPU use bf16 (or int8 for embedding)")
    if precision == "int8" and accelerator:
        raise ValueError("int8 (dynamic quantisation) runs on the CPU only; on a GPU use auto or bf16")
    return precision


def inference_precision(precision: str, device: torch.device, random_weights: bool = False) -> str:
    """What ``precision`` means for running a model on ``device``: :func:`check_precision`, with
    ``auto`` at fp32 for random weights (see the module doc)."""
    if precision == "auto" and random_weights:
        check_precision(precision, "inference")
        return "fp32"
    return check_precision(precision, "inference", device)


def training_autocast(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for training at ``precision`` on ``device``."""
    import torch  # see resolve_device

    precision = check_precision(precision, "training", device)
    if precision == "fp32":
        return None, False
    if precision == "fp16":
        return torch.float16, True
    return torch.bfloat16, False


def prepare_model(model: Any, device: str = "auto", precision: str = "fp32") -> tuple[Any, Any, Any]:
    """Put the model on its device at the asked precision; returns (model, device, autocast dtype).

    CPU: bf16 casts the weights (faster than autocast on CPUs with bf16 units), int8 applies
    dynamic quantisation to the Linear layers. GPU: autocast in fp16/bf16. The caller's model is
    left as it is; the CPU copy is made once per model and weights (not once per slide), and
    shares every tensor it does not convert. A caller that needs only the converted model (the
    CLI) keeps the copy and drops its fp32 model: the copy is returned as it is next time.
    """
    import torch  # see resolve_device

    dev = resolve_device(device)
    random_weights = bool(getattr(getattr(model, "weights", None), "random", False))
    precision = inference_precision(precision, dev, random_weights)
    model = model.eval().to(dev)
    if precision == "fp32" or getattr(model, "xmag_precision", None) == precision:
        return model, dev, None
    if dev.type != "cpu":  # bf16 or fp16: autocast on the accelerator
        return model, dev, torch.float16 if precision == "fp16" else torch.bfloat16
    # parameter versions change with every in-place update (an optimiser step): a trained model
    # gets a new copy
    key = (precision, sum(p._version for p in model.parameters()))
    cached = _PREPARED.get(model)
    if cached is None or cached[0] != key:
        lean = convert_for_cpu(model, precision)
        lean.xmag_precision = precision  # prepare_model(lean, same precision) returns it as is
        cached = _PREPARED[model] = (key, lean)
    return cached[1], dev, None


# model -> ((precision, weights version), converted copy); goes with the model
_PREPARED: weakref.WeakKeyDictionary[Any, tuple[tuple[str, int], Any]] = weakref.WeakKeyDictionary()
