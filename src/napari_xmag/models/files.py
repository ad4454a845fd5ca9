"""Reading weight files without running anything they hold.

* ``.safetensors`` through safetensors: tensors only;
* ``.bin``/``.pth``/``.pt``/``.ckpt`` only through ``torch.load(weights_only=True)``, which
  refuses pickles that carry code (:func:`torch_load_safely` turns the refusal into one line);
* a folder: ``model.safetensors``, ``pytorch_model.bin``, or its single weight file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

__all__ = [
    "DIR_PREFERRED",
    "WEIGHT_SUFFIXES",
    "WeightsError",
    "find_weights_file",
    "load_checkpoint",
    "sha256_file",
    "torch_load_safely",
    "unpickling_reason",
]

#: Files read as weights, safetensors first.
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_PICKLE_SUFFIXES = frozenset(WEIGHT_SUFFIXES[1:])
DIR_PREFERRED = ("model.safetensors", "pytorch_model.bin")
#: Hugging Face's sharded checkpoints: an index naming, for every tensor, the shard that holds it.
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAX_INDEX_BYTES = 16 << 20


class WeightsError(RuntimeError):
    """Weights cannot be found, read or fitted; the message says what and what to do."""

    #: For a checkpoint that fits no model: how many keys and shapes it got wrong (closest first).
    mismatches: float = float("inf")




def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; once per process while the file's size and
    modification time stay the same (a command hashes its weights to plan, then to build)."""
    p = Path(path).resolve()
    st = p.stat()
    own = _sha256(p, st.st_size, st.st_mtime_ns, chunk)
    if not p.name.endswith(".index.json"):
        return own
    digest = hashlib.sha256(own.encode())  # a sharded checkpoint: the index and every shard
    for shard in _shards(p):
        digest.update(sha256_file(shard, chunk).encode())
    return digest.hexdigest()


#: torch dtype names -> safetensors' codes: one spelling, so that a .bin and a .safetensors of
#: the same tensors hash the same
_DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
    "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def tensors_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the tensors a weights file holds, not of the file: every tensor's name, dtype,
    shape and bytes, in name order. A re-export with other metadata, another tensor order, or
    another container (``.bin`` vs ``.safetensors``, one file vs shards) is the same weights.
    Safetensors are read from their header and byte ranges (no torch); pickles through
    :func:`torch_load_safely`. Once per process per file version."""
    p = Path(path).resolve()
    st = p.stat()
    return _tensors_sha256(p, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _tensors_sha256(path: Path, size: int, mtime_ns: int) -> str:
    files = _shards(path) if path.name.endswith(".index.json") else [path]
    entries: list[tuple[str, str, tuple[int, ...], Path, Any]] = []
    for file in files:
        if file.suffix.lower() == ".safetensors":
            entries += _safetensors_entries(file)
        else:
            entries += _pickle_entries(file)
    digest = hashlib.sha256()
    for name, dtype, shape, file, where in sorted(entries, key=lambda e: e[0]):
        digest.update(f"{name}\0{dtype}\0{','.join(map(str, shape))}\0".encode())
        if isinstance(where, bytes):
            digest.update(where)
            continue
        start, end = where
        with file.open("rb") as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                block = fh.read(min(left, 1 << 20))
                if not block:
                    raise WeightsError(f"{file}: tensor {name} is cut short")
                digest.update(block)
                left -= len(block)
    return digest.hexdigest()


def _safetensors_entries(file: Path) -> list[tuple[str, str, tuple[int, ...], Path, Any]]:
    with file.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > MAX_INDEX_BYTES * 4:
            raise WeightsError(f"{file}: a safetensors header of {length} bytes")
        header = json.loads(fh.read(length))
    base = 8 + length
    return [(name, str(info["dtype"]), tuple(int(d) for d in info["shape"]), file,
             (base + int(info["data_offsets"][0]), base + int(info["data_offsets"][1])))
            for name, info in header.items() if name != "__metadata__"]


def _pickle_entries(file: Path) -> list[tuple[str, str, tuple[int, ...], Path, Any]]:
    import torch  # a pickle's tensors exist only once it is read (weights only, as always)

    out: list[tuple[str, str, tuple[int, ...], Path, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            code = _DTYPE_CODES.get(str(t.dtype).removeprefix("torch."), str(t.dtype))
            flat = t.reshape(-1)  # a 0-dim tensor (a BatchNorm counter) has no byte view
            raw = flat.view(torch.uint8) if t.dtype != torch.bool else flat.to(torch.uint8)
            out.append((prefix, code, tuple(t.shape), file, raw.numpy().tobytes()))
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))

    walk(torch_load_safely(file, WeightsError), "")
    return out


def _shards(index: Path) -> list[Path]:
    """The shard files an index names, each in the index's own folder (never elsewhere)."""
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise WeightsError(f"{index}: {index.stat().st_size} bytes is too large for a shard index")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{index}: not a shard index (no weight_map): {first_line(exc)}") from None
    shards = []
    for name in names:
        plain = isinstance(name, str) and Path(name).name == name
        if not plain or Path(name).suffix.lower() not in WEIGHT_SUFFIXES:
            raise WeightsError(f"{index}: names a shard {name!r} outside its folder or of another type")
        shard = index.parent / name
        if not shard.is_file():
            raise WeightsError(f"{index}: its shard {name} is missing")
        shards.append(shard)
    return shards


@functools.lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int, chunk: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a weight file without executing anything it contains.

    ``.safetensors`` through safetensors; pickle-based formats only through
    ``torch.load(weights_only=True)``. A pickle that references any callable beyond
    tensors and plain containers is refused with :class:`WeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    if path.name.endswith(".index.json"):  # sharded: every shard by the same rules, merged
        merged: dict[str, Any] = {}
        for shard in _shards(path):
            part = load_checkpoint(shard)
            if not isinstance(part, dict):
                raise WeightsError(f"{shard}: a shard is not a flat dict of tensors")
            merged.update(part)
        return merged
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # imports torch: see torch_load_safely
        except ImportError as exc:  # pragma: no cover - safetensors ships with timm
            raise WeightsError("reading .safetensors needs the 'safetensors' package") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"cannot read {path} as safetensors: {exc}") from exc
    if suffix not in _PICKLE_SUFFIXES:
        raise WeightsError(
            f"unknown weight file type {path.name!r}; expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return torch_load_safely(path, WeightsError)


def torch_load_safely(
    path: str | os.PathLike[str], error: type[Exception], what: str = "PyTorch checkpoint"
) -> Any:
    """``torch.load(path, weights_only=True)``, its refusals turned into one line of ``error``.

    torch's own message advises retrying with ``weights_only=False``, which would run the code
    the file carries: the line says what was refused and how to convert a trusted file instead.
    """
    import torch  # here: a batch client that only lists weight files stays without torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise error(
            f"refused to read {path}: it holds Python objects that torch.load(weights_only=True) "
            f"does not allow ({unpickling_reason(exc)}). Such a pickle could run code when loaded, so it is "
            "never fully unpickled. If you trust the file, re-save just its tensors on a machine where "
            "running it is acceptable, e.g. safetensors.torch.save_file(state_dict, 'model.safetensors')."
        ) from None
    except Exception as exc:
        raise error(f"cannot read {path} as a {what}: {first_line(exc)}") from None


def unpickling_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with
    ``weights_only=False`` (which would run the code)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        boilerplate = ("Weights only load failed", "Check the documentation", "Please file")
        if line and not line.startswith(boilerplate):
            return line.rstrip(".")
    return "objects other than tensors and plain containers"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def find_weights_file(folder: str | os.PathLike[str]) -> Path:
    """The weight file of a directory: ``model.safetensors``, ``pytorch_model.bin``, or the only one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"not a directory: {folder}")
    for name in (*DIR_PREFERRED, *SHARD_INDEXES):
        if (folder / name).is_file():
            return folder / name
    for suffixes in ((".safetensors",), tuple(_PICKLE_SUFFIXES)):
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise WeightsError(f"{folder} holds several weight files ({names}); pass the one to use")
    raise WeightsError(
        f"no weight file in {folder}: expected model.safetensors, pytorch_model.bin or a single "
        f"{'/'.join(WEIGHT_SUFFIXES)} file"
    )


