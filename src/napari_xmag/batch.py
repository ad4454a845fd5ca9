"""Batch embedding on dask.distributed: one task per slide, a run manifest, reruns that redo
only what is missing.

>>> result = run_batch(["slides/"], "features/", model="xmag", local_workers=2)  # doctest: +SKIP
>>> result.counts                                                                   # doctest: +SKIP
{'done': 10, 'skipped': 0, 'failed': 0}

Without a scheduler an embedded :class:`distributed.LocalCluster` runs the tasks (one worker
process per slot, one thread each); with an address or a cluster object (a dask-jobqueue
``SLURMCluster``) they run there. Each task builds the model once per worker process and calls
:func:`napari_xmag.embed.embed_slide`, so a batch writes the same files as ``xmag embed``.

``OUT/manifest.json`` records the run (model, weights and their sha256, settings) and one entry
per slide (status, reason, output, patches, times, worker, attempts, memory); it is written at
the start and the end of a run, and every finished slide is appended to its journal in between
(:mod:`napari_xmag.manifest`: crash-safe, and shared safely by runs into one folder). A slide
that fails, or whose worker dies, becomes a ``failed`` entry and the batch goes on; a rerun
skips what is done and retries the rest.

``distributed`` is imported inside the functions that need it; torch only on the workers.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, as_completed, get_worker

from . import __version__
from ._atomic import check_output_folder, remove_stale_parts
from ._memory import RssSampler
from ._values import json_safe
from .embed import EmbedSettings, embed_slide, resolved_precision
from .features import unique_feature_paths
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, STATUSES, RunManifest, read_manifest
from .models.files import WEIGHT_SUFFIXES
from .provenance import model_identity
from .slide_list import SlideEntry, find_slides

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "STATUSES",
    "BatchError",
    "BatchResult",
    "available_cores",
    "find_slides",
    "local_cluster_shape",
    "parse_resources",
    "read_manifest",
    "run_batch",
]

#: Final statuses of a slide (:data:`napari_xmag.manifest.STATUSES`). ``pending`` appears only
#: in the manifest of a run still going (or whose client was killed): it is redone by the next
#: run, as ``failed`` is.
_REASON_CHARS = 400
_MODEL_KEYS = ("model", "weights_source", "weights_sha256", "weights_tensors_sha256", "weights_random",
               "embed_dim")


class BatchError(ValueError):
    """The batch cannot start: a missing slide, a bad list, two slides with one output name,
    an unreachable scheduler. The message names the cause."""


def parse_resources(specs: str | Sequence[str] | Mapping[str, float] | None) -> dict[str, float]:
    """``"GPU=1"``, ``"GPU=1,MEM=8e9"`` or several such strings -> ``{"GPU": 1.0, ...}``."""
    if specs is None:
        return {}
    if isinstance(specs, Mapping):
        items = [(str(k), v) for k, v in specs.items()]
    else:
        parts = [p.strip() for s in ([specs] if isinstance(specs, str) else specs) for p in s.split(",")]
        items = []
        for part in filter(None, parts):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise BatchError(f"resource {part!r}: expected NAME=AMOUNT, e.g. GPU=1")
            items.append((name.strip(), value))
    out = {}
    for name, value in items:
        try:
            amount = float(value)
        except (TypeError, ValueError):
            raise BatchError(f"resource {name}={value!r}: the amount is not a number") from None
        if not amount > 0:
            raise BatchError(f"resource {name}={value!r}: the amount must be positive")
        out[name] = amount
    return out


# ---- the manifest -----------------------------------------------------------------------
@dataclass
class BatchResult:
    """What a batch did: the manifest as written, and where."""

    manifest_path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def slides(self) -> list[dict[str, Any]]:
        """The entries of this run's slides (earlier runs' other slides are in the manifest too)."""
        return [s for s in self.manifest["slides"] if s.get("in_run", True)]

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for slide in self.slides:
            counts[slide["status"]] = counts.get(slide["status"], 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        """Every slide of the run done or skipped."""
        return all(s["status"] in ("done", "skipped") for s in self.slides)

    def summary(self) -> str:
        counts = self.counts
        parts = ", ".join(f"{counts[k]} {k}" for k in STATUSES)
        seconds = self.manifest.get("seconds")
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        return f"{len(self.slides)} slides: {parts}{took}; manifest: {self.manifest_path}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message``, at most a few hundred characters."""
    text = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."


def _weights_fingerprint(model: str, weights: str) -> list[Any] | None:
    """Size and mtime of local weight files, so that a rerun notices replaced weights without
    reading them; ``None`` for hub and registry weights (named, not fingerprinted)."""
    ref = weights if weights not in ("auto", "random") else (model if weights == "auto" else "")
    if not ref or ref.startswith("hf-hub:"):
        return None
    path = Path(ref).expanduser()
    if path.is_dir():
        suffixes = (*WEIGHT_SUFFIXES, ".json")  # weights and their model folder's config
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes)
    elif path.is_file():
        files = [path]
    else:
        return None
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _output_stat(path: Path) -> list[int] | None:
    """Size (summed over a zarr folder) and mtime of an output, to know it is the one recorded."""
    try:
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        else:
            size = path.stat().st_size
        return [size, path.stat().st_mtime_ns]
    except OSError:
        return None


def _check_model(model: str, weights: str) -> None:
    """Fail before the cluster starts for a model or weights reference that cannot exist."""
    named = weights in ("auto", "random") or weights.startswith("hf-hub:")
    if not named and not Path(weights).expanduser().exists():
        raise BatchError(f"weights {weights!r}: no such file or folder (or auto, random, hf-hub:ORG/NAME)")
    if model.startswith("hf-hub:") or Path(model).expanduser().exists():
        return
    from .models.registry import get_spec  # the registry alone: no torch on the client

    get_spec(model)  # UnknownModelError (a ValueError) lists the registered names


# ---- the task, on a worker ----------------------------------------------------------------
_MODEL_LOCK = threading.Lock()
_MODEL_CACHE: dict[tuple[str, str, str, str], Any] = {}  # one model per worker process


def _cached_model(model: str, weights: str, device: str, precision: str) -> tuple[Any, float]:
    """The model for this key, built on first use in this process; (model, seconds spent building)."""
    key = (model, weights, device, precision)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key], 0.0
        _MODEL_CACHE.clear()  # a new batch with another model: free the old one first
        gc.collect()
        start = time.perf_counter()
        from .models import inference_model  # torch: on the workers only, never on the client

        _MODEL_CACHE[key] = inference_model(model, weights, device=device, precision=precision)
        return _MODEL_CACHE[key], time.perf_counter() - start


def _worker_address() -> str | None:
    try:

        return get_worker().address
    except (ImportError, ValueError):  # not on a dask worker (called in-process)
        return None


def _embed_task(job: dict[str, Any]) -> dict[str, Any]:
    """Embed one slide on this worker; never raises: a failure is returned as a record."""
    record: dict[str, Any] = {
        "started": _now(), "worker": _worker_address(), "host": socket.gethostname(), "pid": os.getpid(),
    }
    start = time.perf_counter()
    phase = "model"
    with RssSampler() as rss:
        try:
            if job.get("torch_threads"):
                import torch  # on the workers only, never on the client

                torch.set_num_threads(int(job["torch_threads"]))
            settings = EmbedSettings(**job["settings"])
            model, built = _cached_model(job["model"], job["weights"], settings.device, settings.precision)
            who = model_identity(model)
            record.update(load_model_seconds=round(built, 3), **{k: who[k] for k in _MODEL_KEYS},
                          # auto: what this worker's CPU or GPU took
                          precision=resolved_precision(settings, bool(who["weights_random"])))
            phase = "embed"
            result = embed_slide(job["slide"], model, job["out_dir"], settings, fmt=job["format"],
                                 overwrite=job["overwrite"], progress=False)
            record.update(
                status="skipped" if result.skipped else "done",
                reason="the output exists, made with the same settings" if result.skipped else None,
                output=str(result.output), patches=result.patches, seconds=round(result.seconds, 3),
            )
        except Exception as err:  # one bad slide must not stop the batch: it becomes its record
            reason = _one_line(err)
            if phase == "model":
                reason = f"building the model: {reason}"
            record.update(status="failed", reason=reason)
        gc.collect()  # what the slide left that is garbage is not its memory
    record.update(rss_before_mb=round(rss.before, 1), rss_peak_mb=round(rss.peak, 1),
                  rss_after_mb=round(rss.after, 1))
    record["task_seconds"] = round(time.perf_counter() - start, 3)
    record["finished"] = _now()
    return record


# ---- the batch, on the client -----------------------------------------------------------
def run_batch(
    slides: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | SlideEntry],
    out_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] = "xmag",
    weights: str | os.PathLike[str] = "auto",
    settings: EmbedSettings | None = None,
    fmt: str = "h5",
    overwrite: bool = False,
    scheduler: Any = None,
    client: Any = None,
    local_workers: int | None = None,
    resources: str | Sequence[str] | Mapping[str, float] | None = None,
    torch_threads: int | None = None,
    on_slide: Callable[[dict[str, Any]], None] | None = None,
) -> BatchResult:
    """Embed ``slides`` into ``out_dir`` on a dask cluster, one task per slide.

    ``slides``: files, folders and ``.txt``/``.csv`` lists (see :func:`find_slides`).
    ``model``/``weights``: as :func:`napari_xmag.models.create_model` takes them, resolved on
    each worker (paths must be valid there). ``settings``/``fmt``/``overwrite``: as
    :func:`napari_xmag.embed.embed_slide`.

    Where the tasks run: ``client`` (an open :class:`distributed.Client`, left open), else
    ``scheduler`` (an address such as ``tcp://host:8786`` or a cluster object, e.g. a
    dask-jobqueue ``SLURMCluster``), else a :class:`distributed.LocalCluster` of
    ``local_workers`` processes of one thread each (default: cores // 4, 1 to 4), closed at
    the end. ``resources`` (``"GPU=1"``) is what every task needs; a LocalCluster's workers
    each offer it. ``torch_threads``: per task (default: cores // workers for a LocalCluster,
    the worker's own setting for a cluster).

    Slides that an earlier run in ``out_dir`` recorded done, with the same settings and an
    unchanged output, are ``skipped`` without a task; a worker also skips an existing output
    made with the same settings. ``on_slide(entry)`` is called for every finished slide.
    Ctrl-C cancels the tasks, closes an own cluster and leaves a consistent manifest.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    settings = settings or EmbedSettings()
    if settings.tokens and fmt != "zarr":
        settings = replace(settings, tokens=False)  # as embed_slide does: tokens live in zarr only
    model, weights = os.fspath(model), os.fspath(weights)
    needs = parse_resources(resources)
    found = find_slides(slides)
    try:
        outputs = unique_feature_paths([s.path for s in found], out_dir, fmt)
    except ValueError as err:
        raise BatchError(str(err)) from None
    _check_model(model, weights)
    if local_workers is not None and local_workers < 1:
        raise BatchError(f"local workers must be at least 1, not {local_workers}")
    check_output_folder(out_dir)  # OutputError before any cluster starts
    run_id = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    log = RunManifest(out_dir, run_id, overwrite=overwrite)  # a foreign manifest.json: refused now
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = log.path

    identity = {
        "model": model, "weights": weights, "weights_fingerprint": _weights_fingerprint(model, weights),
        "mpp": settings.mpp, "patch_size": settings.patch_size,
        "stride": settings.stride or settings.patch_size,
        "tissue_threshold": settings.tissue_threshold, "mpp_override": settings.mpp_override,
        "precision": settings.precision, "tokens": settings.tokens, "format": fmt,
    }
    settings_id = _settings_id(identity)
    previous = log.previous()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "xmag_version": __version__,
        "started": _now(), "finished": None, "seconds": None, "interrupted": False, "out_dir": str(out_dir),
        "model": None, "model_ref": model, "weights": weights, "weights_source": None,
        "weights_sha256": None, "weights_random": None, "embed_dim": None,
        "run": run_id, "settings": identity, "settings_id": settings_id,
        "options": {"batch_size": settings.batch_size, "reader_threads": settings.workers,
                    "device": settings.device, "overwrite": overwrite},
        "cluster": None, "counts": {}, "slides": [],
    }
    if previous is not None and _settings_id(previous.get("settings")) == settings_id:
        for key in _MODEL_KEYS:  # same settings: what is known of the model carries over
            manifest[key] = previous.get(key)

    entries_by_path: dict[str, dict[str, Any]] = {}
    todo: list[tuple[SlideEntry, Path]] = []
    for slide, output in zip(found, outputs, strict=True):
        entry = _entry(slide, output, run_id, settings_id)
        old = _previous_entry(previous, slide)
        if old is not None and _still_done(old, slide, output, settings_id, previous):
            when = old.get("finished")  # None: skipped by the client then too; keep its reason
            reason = f"done by an earlier run ({when})" if when else old.get("reason")
            entry.update(status="skipped", reason=reason,
                         patches=old.get("patches"), output_stat=old.get("output_stat"),
                         weights_sha256=old.get("weights_sha256"))
        else:
            todo.append((slide, output))
        entries_by_path[str(slide.path)] = entry
    manifest["slides"] = list(entries_by_path.values())
    log.write(manifest)  # merged with what earlier (and concurrent) runs recorded
    if on_slide is not None:
        for entry in manifest["slides"]:
            if entry.get("in_run", True) and entry["status"] == "skipped":
                on_slide(entry)

    interrupted = False
    try:
        if todo:
            _run_tasks(
                todo, out_dir, manifest, log, entries_by_path, model=model, weights=weights,
                settings=settings, fmt=fmt, overwrite=overwrite, scheduler=scheduler, client=client,
                local_workers=local_workers, needs=needs, torch_threads=torch_threads, on_slide=on_slide,
            )
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        for entry in entries_by_path.values():
            if entry["status"] == "pending":
                entry.update(status="failed", reason="KeyboardInterrupt: the batch was interrupted"
                             if interrupted else "the batch stopped before this slide finished")
        seconds = round(time.perf_counter() - start, 3)
        manifest.update(finished=_now(), seconds=seconds, interrupted=interrupted)
        for entry in entries_by_path.values():
            entry["updated"] = time.time_ns()  # this run's final word on its slides
        log.write(manifest)
    return BatchResult(manifest_path, manifest)


def _settings_id(identity: Any) -> str:
    """A short digest of a run's settings: entries of runs with the same one are interchangeable."""
    text = json.dumps(json_safe(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _entry(slide: SlideEntry, output: Path, run_id: str, settings_id: str) -> dict[str, Any]:
    return {
        "run": run_id, "settings_id": settings_id, "updated": time.time_ns(),
        "name": slide.path.name, "path": str(slide.path), "mpp_override": slide.mpp_override,
        "status": "pending", "reason": None, "output": str(output), "output_stat": None, "patches": None,
        "seconds": None, "task_seconds": None, "load_model_seconds": None, "queued": None, "started": None,
        "finished": None, "worker": None, "host": None, "pid": None, "attempts": 0,
        "rss_before_mb": None, "rss_peak_mb": None, "rss_after_mb": None, "weights_sha256": None,
    }


def _previous_entry(previous: dict[str, Any] | None, slide: SlideEntry) -> dict[str, Any] | None:
    if previous is None:
        return None
    return next((s for s in previous.get("slides", []) if s.get("path") == str(slide.path)), None)


def _still_done(old: dict[str, Any], slide: SlideEntry, output: Path, settings_id: str,
                previous: dict[str, Any]) -> bool:
    """An earlier run finished this slide with these settings and its output is untouched."""
    made_with = old.get("settings_id") or _settings_id(previous.get("settings"))  # older manifests
    return (
        made_with == settings_id
        and old.get("status") in ("done", "skipped")
        and old.get("output") == str(output)
        and old.get("mpp_override") == slide.mpp_override
        and old.get("output_stat") is not None
        and _output_stat(output) == old.get("output_stat")
    )


def _run_tasks(
    todo: list[tuple[SlideEntry, Path]],
    out_dir: Path,
    manifest: dict[str, Any],
    log: RunManifest,
    entries: dict[str, dict[str, Any]],
    *,
    model: str,
    weights: str,
    settings: EmbedSettings,
    fmt: str,
    overwrite: bool,
    scheduler: Any,
    client: Any,
    local_workers: int | None,
    needs: dict[str, float],
    torch_threads: int | None,
    on_slide: Callable[[dict[str, Any]], None] | None,
) -> None:

    client, closers, cluster_info = _connect(client, scheduler, local_workers, needs, torch_threads)
    manifest["cluster"] = cluster_info
    torch_threads = cluster_info["torch_threads"]
    futures: dict[Any, tuple[SlideEntry, Path]] = {}
    token = f"{os.getpid()}-{time.time_ns() % 10**9}"
    try:
        for i, (slide, output) in enumerate(todo):
            override = slide.mpp_override or settings.mpp_override
            job = {
                "slide": str(slide.path), "out_dir": str(out_dir), "model": model, "weights": weights,
                "settings": asdict(replace(settings, mpp_override=override)),
                "format": fmt, "overwrite": overwrite, "torch_threads": torch_threads,
            }
            key = f"xmag-embed-{output.stem}-{token}-{i}"
            future = client.submit(_embed_task, job, key=key, pure=False, resources=needs or None,
                                   priority=-i)
            futures[future] = (slide, output)
            entries[str(slide.path)]["queued"] = _now()
        for future in as_completed(list(futures)):
            entry = _record(future, futures.pop(future), client, manifest, entries)
            log.record(entry)  # one line appended: the manifest itself is rewritten at the end
            if on_slide is not None:
                on_slide(entry)
    except KeyboardInterrupt:
        for future in [f for f in futures if f.done()]:  # finished meanwhile: keep what they did
            log.record(_record(future, futures.pop(future), client, manifest, entries))
        raise
    finally:
        for future in futures:
            future.cancel()
        for close in closers:
            close()
        for _, output in todo:  # what killed workers left; a live writer's part is kept
            remove_stale_parts(output)


def _record(
    future: Any, todo: tuple[SlideEntry, Path], client: Any, manifest: dict[str, Any],
    entries: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Fill the slide's entry from its finished task; the model's facts go to the batch level."""
    slide, output = todo
    entry = entries[str(slide.path)]
    entry.update(_task_record(client, future))
    entry["attempts"] = _attempts(client, future.key)
    future.release()
    if entry["status"] in ("done", "skipped"):
        entry["output_stat"] = _output_stat(output)
    if entry.get("model") is not None:  # the task built (or had) the model
        for key in _MODEL_KEYS:
            manifest[key] = entry.get(key)
    for key in _MODEL_KEYS:
        if key != "weights_sha256":
            entry.pop(key, None)  # the slide keeps its own weights_sha256
    return entry


def available_cores() -> int:
    """The cores this process may run on (a container's or a job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_cluster_shape(local_workers: int | None, torch_threads: int | None) -> tuple[int, int]:
    """(worker processes, torch threads per task) of a local cluster: by default cores // 4
    workers (1 to 4) sharing the cores. Asking for more threads in all than there are cores is
    allowed but warned about: spin-waiting torch threads then slow every slide many times over."""
    cores = available_cores()
    n = local_workers or max(1, min(4, cores // 4))
    threads = torch_threads or max(1, cores // n)
    if n * threads > cores:
        warnings.warn(
            f"{n} local workers x {threads} torch threads = {n * threads} threads on {cores} cores: "
            f"oversubscribed, every slide runs many times slower; use at most {cores} in all "
            f"(e.g. --local-workers {n} --torch-threads {max(1, cores // n)})",
            stacklevel=4,
        )
    return n, threads


def _connect(
    client: Any, scheduler: Any, local_workers: int | None, needs: dict[str, float], torch_threads: int | None
) -> tuple[Any, list[Callable[[], Any]], dict[str, Any]]:
    """(client, what to close at the end, what the manifest says of the cluster)."""
    closers: list[Callable[[], Any]] = []
    if client is not None:
        info = {"scheduler": client.scheduler.address, "local_workers": None}
    elif scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as err:
            raise BatchError(f"cannot reach the dask scheduler at {scheduler}: {_one_line(err)}") from None
        closers.append(client.close)
        info = {"scheduler": client.scheduler.address, "local_workers": None}
    else:
        n, torch_threads = local_cluster_shape(local_workers, torch_threads)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, resources=needs or None,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
        closers += [client.close, cluster.close]
        info = {"scheduler": cluster.scheduler_address, "local_workers": n}
    if needs and info["local_workers"] is None:  # a cluster of others: is anyone offering it?
        workers = client.scheduler_info().get("workers", {}).values()
        if workers and not any(all(w.get("resources", {}).get(k, 0) >= v for k, v in needs.items())
                               for w in workers):
            warnings.warn(f"no worker of {info['scheduler']} offers {needs}; the tasks wait until one joins",
                          stacklevel=4)
    info.update(resources=needs or None, torch_threads=torch_threads)
    return client, closers, info


def _task_record(client: Any, future: Any) -> dict[str, Any]:
    """The task's own record, or a failed one for a task that died with its workers."""
    try:
        if future.status == "finished":
            return future.result()
        err = future.exception() if future.status == "error" else None
    except Exception as exc:  # a result that cannot be fetched is a failure of this slide too
        err = exc
    if err is None:

        err = CancelledError(f"the task was {future.status}")
    return {"status": "failed", "reason": _one_line(err), "finished": _now()}


def _attempts(client: Any, key: str) -> int | None:
    """How many workers ran the task: 1, plus one for each that died while running it."""

    def count(dask_scheduler: Any, key: str) -> int | None:
        ts = dask_scheduler.tasks.get(key)
        return None if ts is None else ts.suspicious + 1

    try:
        return client.run_on_scheduler(count, key=key)
    except Exception:  # a scheduler that refuses to run functions: attempts stay unknown
        return None
