"""What the zoo holds and what a weights file is: ``xmag models`` and ``xmag models --inspect``.

:func:`zoo_table` lists every registered model with what its model card says (role,
architecture, parameters, embedding, native µm/px, licence, gated) and where its weights are
looked for, and whether they are already in the local Hugging Face cache (no network asked).
:func:`inspect_weights` says what a checkpoint file or folder is (a napari-xmag model folder, a
Hugging Face folder, with custom code that is never imported, a shard index, a training
checkpoint), the backbones and heads found in it, and which registered models it fits, i.e.
how ``create_model`` would load it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .files import WeightsError, find_weights_file, load_checkpoint
from .folder import CONFIG_FORMAT, records_random
from .registry import get_spec, list_models

__all__ = ["inspect_weights", "zoo_table"]


def zoo_table() -> list[dict[str, Any]]:
    """One row per registered model (no torch, no network)."""
    rows = []
    for name in list_models():
        spec = get_spec(name)
        rows.append({
            "name": spec.name,
            "role": spec.role,
            "architecture": spec.architecture,
            "params": spec.param_count,
            "embedding": f"{spec.embed_dim}-d {spec.embedding}",
            "native_mpp": spec.native_mpp,
            "licence": spec.licence,
            "gated": spec.gated,
            "weights": f"hf-hub:{spec.hf_id}" if spec.hf_id else "-",
            "local": _cached(spec.hf_id, spec.hf_filenames) or "-",
        })
    return rows


def _cached(repo_id: str | None, filenames: tuple[str, ...]) -> str | None:
    """The cached file of ``repo_id`` if the local Hugging Face cache holds one."""
    if not repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # on demand: the registry is data only
    except ImportError:  # pragma: no cover - a dependency
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def inspect_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``path`` is and how it would be loaded (reads tensors safely; runs nothing)."""
    from .convert import _ANCHOR, _HF_ANCHOR, _split_heads, _tensor_dicts, convert_checkpoint  # torch:
    from .factory import build_backbone  # only to inspect; `xmag models` lists without torch

    p = Path(path).expanduser()
    report: dict[str, Any] = {"path": str(p)}
    config = None
    if p.is_dir():
        from .._atomic import read_small_json  # see _cached: listing stays light

        config = read_small_json(p / "config.json", limit=16 << 20)
        if isinstance(config, dict) and config.get("format") == CONFIG_FORMAT:
            report["kind"] = (f"napari-xmag model folder: {config.get('model')}"
                              f"{' (random weights)' if records_random(config) else ''}")
        elif isinstance(config, dict) and (config.get("model_type") or config.get("architectures")):
            code = config.get("auto_map")
            named = sorted(code.values()) if isinstance(code, dict) else code
            report["kind"] = (f"Hugging Face folder (model_type {config.get('model_type')!r})"
                              + (f"; custom code {named} is never imported, only its weights read"
                                 if code else ""))
        else:
            report["kind"] = "folder"
        file = find_weights_file(p)
    else:
        file = p
        report["kind"] = "shard index" if p.name.endswith(".index.json") else f"{p.suffix or 'file'} weights"
    report["weights_file"] = str(file)
    checkpoint = load_checkpoint(file)
    dicts = list(_tensor_dicts(checkpoint))
    report["tensor_dicts"] = [{"where": label, "tensors": len(flat)} for label, flat in dicts]
    prefixes: set[str] = set()
    heads: set[str] = set()
    for _, flat in dicts:
        for key in flat:
            for anchor in (_ANCHOR, _HF_ANCHOR):
                if key == anchor or key.endswith("." + anchor):
                    prefixes.add(key[: -len(anchor)] or "(top level)")
        heads |= {pre or "(top level)" for pre in _split_heads(flat)}
    report["backbone_prefixes"] = sorted(prefixes)
    report["head_prefixes"] = sorted(heads)
    fits, closest = [], None
    for name in list_models():
        spec = get_spec(name)
        for tiny in (False, True):  # the tiny configurations: the test files of this project
            backbone = build_backbone(spec, tiny=tiny, device="meta")
            try:
                converted = convert_checkpoint(checkpoint, backbone, spec, source=str(file))
            except WeightsError as exc:
                size = getattr(exc, "mismatches", float("inf"))
                if not tiny and (closest is None or size < closest[0]):
                    closest = (size, name, str(exc))
                continue
            fits.append({"model": name, "tiny": tiny, "location": converted.location,
                         "notes": converted.notes})
            break
    report["fits"] = fits
    if fits:
        best = fits[0]
        small = ", tiny=True" if best["tiny"] else ""
        report["load_with"] = (f"create_model({best['model']!r}, weights={str(p)!r}{small});"
                               f" CLI: --model {best['model']} --weights {p}")
    elif closest is not None:
        report["closest"] = closest[2]
        report["first_keys"] = [k for _, flat in dicts for k in flat][:8]
    return report
