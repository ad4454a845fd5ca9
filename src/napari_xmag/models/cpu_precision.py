"""Which precision this CPU runs a ViT fastest at: what ``--precision auto`` means on a CPU.

CPUs differ by more than any default can hide: with AMX (Sapphire Rapids and later) a bf16
ViT-B forward runs ~4-5x fp32; with AVX512-BF16 but no AMX about 2x; without bf16 units, int8
dynamic quantisation (VNNI) wins; without either, fp32. So the choice is made per machine:

1. a candidate from the CPU's flags (``/proc/cpuinfo``): bf16 where ``amx_bf16`` or
   ``avx512_bf16`` is listed, else int8 where VNNI is, else fp32;
2. confirmed once by a short timed probe (an MLP block of ViT-B's width on a batch of 8 patches'
   tokens, ~0.5 s): the candidate must beat fp32 by 10% and keep the block's cosine to fp32 at
   :data:`MIN_COSINE` (bf16 0.999; int8 0.9999, as a whole model loses more than one block),
   else fp32;
3. cached in the user cache (``cpu-precision.json``), keyed by CPU model, flags and torch
   version, so later runs decide in microseconds.

``XMAG_CPU_PRECISION=fp32|bf16|int8`` sets the choice without probing (a shared cluster node,
a test); it is validated like ``--precision``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import write_json
from .._paths import user_cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "CPU_PRECISION_ENV", "CpuInfo", "auto_cpu_precision", "candidate_precision", "convert_for_cpu",
    "cpu_info",
]

CPU_PRECISION_ENV = "XMAG_CPU_PRECISION"
CACHE_NAME = "cpu-precision.json"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
MIN_SPEEDUP = 1.1  # over fp32, for the candidate to be kept
#: Cosine to fp32 the probe's one MLP block must keep for the candidate to be kept. A whole
#: ViT-B/14 loses more than one block: on CMU-1 bf16 kept 0.99992 (its block 0.99998) and
#: dynamic int8 0.99818 (its block 0.9995), so int8 must keep 0.9999 on the block for the model
#: to stay above 0.999 on real tissue (tests/models/test_cpu_precision.py measures both).
MIN_COSINE = {"bf16": 0.999, "int8": 0.9999}
CHOICES = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def key_flags(self) -> str:
        """The flags the choice depends on, for the cache key."""
        return ",".join(sorted(self.flags & set(BF16_FLAGS + INT8_FLAGS))) or "none"


def cpu_info(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
    """The CPU's model name and feature flags (Linux; elsewhere the model name and no flags)."""
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuInfo(model, flags)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, flags)


def candidate_precision(flags: frozenset[str] | set[str]) -> str:
    """What the flags promise: bf16 units, else int8 dot products (VNNI), else neither."""
    if any(f in flags for f in BF16_FLAGS):
        return "bf16"
    if any(f in flags for f in INT8_FLAGS):
        return "int8"
    return "fp32"


@functools.cache
def auto_cpu_precision() -> str:
    """fp32, bf16 or int8: this machine's fastest faithful precision (see the module doc)."""
    forced = os.environ.get(CPU_PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in CHOICES:
            raise ValueError(f"{CPU_PRECISION_ENV}={forced!r}: use one of {', '.join(CHOICES)}")
        return forced
    info = cpu_info()
    candidate = candidate_precision(info.flags)
    if candidate == "fp32":
        return "fp32"
    import torch  # only to probe: the precision vocabulary is read without torch

    key = f"{info.model} | {info.key_flags} | torch {torch.__version__} | {candidate}"
    cache = _cache_path()
    known = _read_cache(cache)
    if isinstance(known.get(key), dict) and known[key].get("precision") in CHOICES:
        return str(known[key]["precision"])
    measured = probe(candidate)
    faithful = measured["cosine"] >= MIN_COSINE[candidate]
    choice = candidate if measured["speedup"] >= MIN_SPEEDUP and faithful else "fp32"
    log.info("precision auto on this CPU: %s (%s %.2fx fp32, cosine %.5f)", choice, candidate,
             measured["speedup"], measured["cosine"])
    known[key] = {"precision": choice, **measured}
    _write_cache(cache, known)
    return choice


def probe(candidate: str, repeats: int = 3) -> dict[str, Any]:
    """Time one MLP block of ViT-B (768 -> 3072 -> 768) on 8 x 257 tokens in fp32 and in
    ``candidate``; the best of ``repeats`` each, after a warm-up. ~0.5 s on 2 cores."""
    import torch  # see auto_cpu_precision


    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768))
        x = torch.randn(8, 257, 768)
    fast = convert_for_cpu(block, candidate)
    dtype = torch.bfloat16 if candidate == "bf16" else torch.float32

    def best(module: Any, inp: Any) -> tuple[float, Any]:
        times = []
        with torch.inference_mode():
            out = module(inp)  # warm-up: oneDNN picks and packs its kernels
            for _ in range(repeats):
                t = time.perf_counter()
                out = module(inp)
                times.append(time.perf_counter() - t)
        return min(times), out

    t32, ref = best(block, x)
    tfast, out = best(fast, x.to(dtype))
    cosine = torch.nn.functional.cosine_similarity(out.float().flatten(1), ref.flatten(1)).min()
    return {"speedup": round(t32 / max(tfast, 1e-9), 3), "cosine": round(float(cosine), 6),
            "fp32_ms": round(1000 * t32, 2), f"{candidate}_ms": round(1000 * tfast, 2)}


def _cache_path() -> Path:
    return user_cache_dir() / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Best effort: a read-only cache only means probing again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data, overwrite=True)
    except OSError as err:
        log.debug("could not cache the CPU precision choice in %s: %s", path, err)


def convert_for_cpu(module: Any, precision: str) -> Any:
    """A CPU copy of ``module`` at ``precision`` sharing what it does not convert: bf16 casts
    the weights (oneDNN/AMX kernels), int8 quantises the Linear layers dynamically."""
    import torch  # see auto_cpu_precision

    if precision == "int8":
        lean = _copy_sharing(module)
        torch.ao.quantization.quantize_dynamic(lean, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return lean
    if precision == "bf16":
        return _copy_sharing(module, torch.bfloat16)
    return module


def _copy_sharing(model: Any, dtype: Any = None) -> Any:
    """A copy of the module tree whose tensors are the model's own, or cast to ``dtype``.

    ``copy.deepcopy`` would first duplicate every weight (344 MB for ViT-B) only for
    quantisation to replace the Linear ones; the memo hands deepcopy the tensors to use instead.
    """
    import torch  # see auto_cpu_precision

    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if dtype is None or not tensor.is_floating_point():
            memo[id(tensor)] = tensor
        elif isinstance(tensor, torch.nn.Parameter):
            memo[id(tensor)] = torch.nn.Parameter(tensor.detach().to(dtype), requires_grad=False)
        else:
            memo[id(tensor)] = tensor.to(dtype)
    return copy.deepcopy(model, memo)
