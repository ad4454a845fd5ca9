"""Whole-slide embedding: tissue patches -> batches -> model -> a features file.

Reader threads (one OpenSlide handle each) read batches ahead of the model, so slide I/O
hides behind the forward pass; the forward runs under ``torch.inference_mode``.

:func:`embed_slide_steps` is the run as a generator: it yields an :class:`EmbedStep` before
the first batch and after each one (what live maps draw), may take the batches in another
order (``near``: those nearest a point first; each batch is still the same patches, so the
features are the same bits), and keeps a cancelled or failed run's rows in a partial file that
the next run with the same settings resumes from. :func:`embed_slide` runs it to the end.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._atomic import (
    OutputError,
    OutputExistsError,
    check_output_folder,
    check_target,
    existing_ancestor,
    output_error,
    remove_stale_parts,
)
from ._memory import format_size, return_freed_memory
from ._progress import progress_bar
from .features import (
    FEATURES_KIND,
    FeatureSet,
    PartialFeatures,
    feature_path,
    is_features_file,
    partial_key,
    read_header,
    read_partial,
    remove_partial,
    settings_differ,
    write_features,
    write_partial,
)
from .models.precision import check_precision, inference_precision, prepare_model, resolve_device
from .provenance import model_identity, same_weights_keys
from .slide import Slide, SlideError, parse_mpp
from .stain import STAIN_METHODS, fit_stain_normalizer
from .tiling import check_patch_fits, patch_grid, require_patches, tissue_mask

log = logging.getLogger(__name__)

__all__ = [
    "EmbedCancelled",
    "EmbedSettings",
    "EmbedStep",
    "NotBrightfieldError",
    "SlideEmbedding",
    "already_done",
    "batch_order",
    "check_slide",
    "default_batch_size",
    "embed_batches",
    "embed_patches",
    "embed_slide",
    "embed_slide_steps",
    "iter_patch_batches",
    "run_to_end",
]

# glibc keeps what reader threads and torch free, fragmented; handing it back costs ~1 ms
TRIM_EVERY_S = 2.0


class EmbedCancelled(Exception):
    """The caller asked to stop; no output was written (``kept``: the partial rows, if any)."""

    #: what of the run was kept (a partial file to resume from), for the user; None: nothing
    kept: str | None = None


class NotBrightfieldError(SlideError):
    """The slide does not look like stained brightfield tissue (a fluorescence background)."""


@dataclass(frozen=True)
class EmbedSettings:
    """How patches are cut and embedded. The defaults are the XMAG student's: 5x, 224 px."""

    mpp: float | str = 2.0
    patch_size: int = 224
    stride: int | None = None  # None: = patch_size, no overlap
    tissue_threshold: float = 0.25  # fraction of a patch that must be tissue
    mpp_override: float | None = None
    batch_size: int | None = None  # None: by device, see default_batch_size
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # this device's fastest faithful precision (models/cpu_precision.py)
    tokens: bool = False  # also keep the patch-token grids (zarr only)
    allow_non_he: bool = False  # embed a slide that does not look like stained brightfield tissue
    stain_norm: str = "none"  # none, macenko or reinhard (stain.py): fitted once per slide
    stain_reference: str | None = None  # an image to normalise to; None: the bundled default

    def __post_init__(self) -> None:
        object.__setattr__(self, "mpp", parse_mpp(self.mpp))
        check_precision(self.precision, "inference")
        if (self.batch_size is not None and self.batch_size < 1) or self.workers < 1 or self.patch_size < 1:
            raise ValueError("batch size, workers and patch size must be positive")
        if self.stain_norm not in STAIN_METHODS:
            raise ValueError(f"stain normalisation must be one of {', '.join(STAIN_METHODS)},"
                             f" not {self.stain_norm!r}")
        if not 0 <= self.tissue_threshold <= 1:
            raise ValueError(f"tissue threshold is a fraction in [0, 1], got {self.tissue_threshold}")


def default_batch_size(device: str) -> int:
    """Patches per forward pass when none is asked for: 8 on a CPU, 64 on a GPU.

    On the CPU small batches are faster, not only lighter: a ViT-B/14 at 224 px ran 3.4 / 3.2 /
    2.8 patches/s (fp32) and 10.4 / 9.2 / 7.9 (int8) at batch 8 / 16 / 32 on 2 cores, as the
    activations of a small batch stay in cache (benchmarks/bench_embed.py).
    """
    return 8 if resolve_device(device).type == "cpu" else 64


@dataclass(frozen=True)
class SlideEmbedding:
    """What one slide's run did."""

    slide: Path
    output: Path
    patches: int
    seconds: float
    skipped: bool = False
    resumed: int = 0  # patches taken from an earlier, stopped run (not embedded in ``seconds``)

    @property
    def patches_per_second(self) -> float:
        done = self.patches - self.resumed
        return done / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        if self.skipped:
            return f"{self.slide.name}: already done ({self.patches} patches) -> {self.output}"
        resumed = f", {self.resumed} of them resumed" if self.resumed else ""
        return (
            f"{self.slide.name}: {self.patches} patches{resumed} in {self.seconds:.1f} s"
            f" ({self.patches_per_second:.1f} patches/s) -> {self.output}"
        )


# ---- reading ----------------------------------------------------------------------------
def iter_patch_batches(
    slide_path: str | os.PathLike[str],
    coords: np.ndarray,
    mpp: float,
    patch_size: int,
    batch_size: int = 32,
    workers: int = 2,
    mpp_override: float | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    starts: Sequence[int] | None = None,
) -> Generator[np.ndarray, None, None]:
    """(B, patch_size, patch_size, 3) uint8 batches in ``coords`` order: ``coords[s : s + B]``
    for each ``s`` of ``starts`` (default: every batch, in order).

    Each worker thread opens its own handle; up to ``2 * workers`` batches are read ahead.
    ``transform`` (a stain normalisation) runs on each batch in the reading thread.
    """
    local = threading.local()
    handles: list[Slide] = []
    lock = threading.Lock()

    def handle() -> Slide:
        if not hasattr(local, "slide"):
            local.slide = Slide(slide_path, mpp=mpp_override)
            with lock:
                handles.append(local.slide)
        return local.slide

    def read(start: int) -> np.ndarray:
        slide = handle()
        chunk = coords[start : start + batch_size]
        out = np.empty((len(chunk), patch_size, patch_size, 3), np.uint8)
        for i, (x, y) in enumerate(chunk):
            out[i] = slide.read_region(int(x), int(y), patch_size, mpp=mpp).image
        return transform(out) if transform is not None else out

    starts = list(range(0, len(coords), batch_size)) if starts is None else [int(v) for v in starts]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xmag-read")
    pending: list[Future[np.ndarray] | None] = []
    try:
        ahead = 2 * workers
        pending.extend(pool.submit(read, start) for start in starts[:ahead])
        for i in range(len(starts)):
            future = pending[i]
            assert future is not None  # each is taken once, in order
            batch = future.result()
            if i + ahead < len(starts):
                pending.append(pool.submit(read, starts[i + ahead]))
            pending[i] = None  # let the batch be freed
            yield batch
    finally:
        for f in pending:
            if f is not None:
                f.cancel()
        pool.shutdown(wait=True)
        for slide in handles:
            slide.close()


def embed_batches(
    model: Any,
    batches: Iterator[np.ndarray],
    total: int,
    *,
    device: str = "auto",
    precision: str = "auto",
    tokens: bool = False,
    cancel: threading.Event | None = None,
    description: str = "embedding",
    done: int = 0,
) -> Generator[tuple[np.ndarray, np.ndarray | None], None, None]:
    """Embed uint8 patch batches one by one: yields (features (B, D) float32, token grids or None).

    ``cancel`` is polled before each batch (:class:`EmbedCancelled`, counting from ``done``)."""
    import torch  # here: opening slides and reading feature files stays without torch

    model, dev, autocast = prepare_model(model, device, precision)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    trimmed = time.monotonic()
    for batch in batches:
        if time.monotonic() - trimmed > TRIM_EVERY_S:  # RSS flat over a whole slide
            return_freed_memory()
            trimmed = time.monotonic()
        if cancel is not None and cancel.is_set():
            raise EmbedCancelled(f"{description}: cancelled after {done} of {total} patches")
        # inference mode per batch, not around the yield: the caller's code runs outside it
        with torch.inference_mode():
            x = model.preprocess(batch).to(dev, dtype=dtype)
            with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
                out = model.embed(x, tokens=tokens)
            pooled, grid = out if tokens else (out, None)
            result = pooled.float().cpu().numpy(), None if grid is None else grid.float().cpu().numpy()
        done += len(batch)
        yield result


def embed_patches(
    model: Any,
    batches: Iterator[np.ndarray],
    total: int,
    *,
    device: str = "auto",
    precision: str = "auto",
    tokens: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    cancel: threading.Event | None = None,
    description: str = "embedding",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed uint8 patch batches; returns (features (N, D) float32, token grids or None)."""
    features: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    bar = progress_bar(progress, total, description)
    try:
        for pooled, grid in embed_batches(model, batches, total, device=device, precision=precision,
                                          tokens=tokens, cancel=cancel, description=description):
            features.append(pooled)
            if grid is not None:
                grids.append(grid)
            bar(sum(len(f) for f in features))
    finally:
        bar(None)
    dim = getattr(model, "embed_dim", 0)
    feats = np.concatenate(features) if features else np.zeros((0, dim), np.float32)
    return feats, (np.concatenate(grids) if grids else None) if tokens else None


def batch_order(coords: np.ndarray, batch_size: int, near: tuple[float, float] | None = None) -> list[int]:
    """The starts of the batches of ``coords`` (``coords[s : s + batch_size]``): in order, or
    those whose patches' mean lies nearest ``near`` (level-0 x, y) first."""
    starts = list(range(0, len(coords), batch_size))
    if near is None or not starts:
        return starts
    centres = np.array([np.asarray(coords[s : s + batch_size], np.float64).mean(axis=0) for s in starts])
    distance = np.hypot(centres[:, 0] - near[0], centres[:, 1] - near[1])
    return [starts[i] for i in np.argsort(distance, kind="stable")]


@dataclass(frozen=True, eq=False)
class EmbedStep:
    """Where a run stands: before the first batch (``rows`` empty) and after each.

    ``features`` is the run's own buffer (rows filled where ``done``): read it, do not keep it
    past the next step without a copy.
    """

    slide: Path
    output: Path
    coords: np.ndarray  # (N, 2) level-0 x, y, grid order
    coords_attrs: dict[str, Any]
    run_attrs: dict[str, Any]
    features: np.ndarray | None  # (N, D) float32; None before the first batch of a fresh run
    done: np.ndarray  # (N,) bool
    rows: slice  # the rows this step filled
    resumed: int  # patches taken from a partial run
    seconds: float  # since the run started

    @property
    def count(self) -> int:
        return int(self.done.sum())

    @property
    def total(self) -> int:
        return len(self.coords)


# ---- one slide, end to end ------------------------------------------------------------
def embed_slide(
    slide_path: str | os.PathLike[str],
    model: Any,
    out_dir: str | os.PathLike[str],
    settings: EmbedSettings | None = None,
    *,
    fmt: str = "h5",
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    cancel: threading.Event | None = None,
) -> SlideEmbedding:
    """Embed the tissue of one slide into ``out_dir/<stem>.h5``; skip it if already done.

    A finished file of ours made from the same slide with the same settings is kept and
    reported as skipped. Anything else at the output (a file of ours from another slide or with
    other settings, a file that is not ours) is an error unless ``overwrite``. Nothing is
    written on failure but the partial file a rerun resumes from (:func:`embed_slide_steps`).
    """
    return run_to_end(embed_slide_steps(slide_path, model, out_dir, settings, fmt=fmt, overwrite=overwrite,
                                        progress=progress, cancel=cancel))


def run_to_end(steps: Generator[Any, None, Any]) -> Any:
    """Drive a generator to its end and return what it returns (its steps are dropped)."""
    result = []

    def collect() -> Generator[Any, None, None]:
        result.append((yield from steps))

    for _ in collect():
        pass
    return result[0]


def embed_slide_steps(
    slide_path: str | os.PathLike[str],
    model: Any,
    out_dir: str | os.PathLike[str],
    settings: EmbedSettings | None = None,
    *,
    fmt: str = "h5",
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    cancel: threading.Event | None = None,
    near: tuple[float, float] | None = None,
) -> Generator[EmbedStep, None, SlideEmbedding]:
    """:func:`embed_slide` as a generator of :class:`EmbedStep` (none for a finished file).

    ``near`` (level-0 x, y): the batches nearest that point go first. A run that stops part-way
    (:class:`EmbedCancelled`, any error) keeps its rows in ``<output>.partial``; a later run of
    the same slide, settings and batch size embeds only the rest, and its file is bit-equal to
    an uninterrupted run's. The features file itself is written once, atomically, at the end.
    """
    settings = settings or EmbedSettings()
    if settings.tokens and fmt != "zarr":
        settings = replace(settings, tokens=False)
        log.warning("token grids are stored in zarr only; --format zarr keeps them")
    slide_path = Path(slide_path)
    output = feature_path(out_dir, slide_path, fmt)
    check_output_folder(out_dir)  # before any work: a run must not end on an unwritable folder
    remove_stale_parts(output)  # what a killed run left, even when the file is finished and skipped
    start = time.perf_counter()
    with Slide(slide_path, mpp=settings.mpp_override) as slide:
        _check_slide(slide, settings)
        identity = model_identity(model)
        run_attrs = run_attributes(slide, identity, settings,
                                   resolved_precision(settings, identity["weights_random"]))
        done_before = finished_patches(output, run_attrs, overwrite)
        if done_before is not None:
            return SlideEmbedding(slide_path, output, done_before, 0.0, skipped=True)
        mask = tissue_mask(slide)
        grid = patch_grid(
            slide,
            mpp=settings.mpp,
            patch_size=settings.patch_size,
            stride=settings.stride,
            min_tissue=settings.tissue_threshold,
            mask=mask,
        )
        require_patches(grid, slide, mask)
        coords_attrs = coords_attributes(slide, grid)
        normalizer = fit_stain_normalizer(slide, settings.stain_norm, settings.stain_reference)
    _check_space(output, len(grid), model, settings.tokens)
    n = len(grid)
    batch_size = settings.batch_size or default_batch_size(settings.device)
    # token grids are not kept part-way: a run with them starts again
    key = None if settings.tokens else partial_key(_partial_identity(run_attrs, settings), grid.coords,
                                                  batch_size)
    dim = int(getattr(model, "embed_dim", 0) or 0) or None
    partial = read_partial(output, key, n, dim) if key is not None else None
    done = partial.done.copy() if partial is not None else np.zeros(n, bool)
    features = partial.features if partial is not None else None
    resumed = int(done.sum())
    if resumed:
        log.info("%s: resuming from %d of %d patches (%s.partial)", slide_path.name, resumed, n, output.name)
    token_rows: list[tuple[int, np.ndarray]] = []

    def step(rows: slice) -> EmbedStep:
        return EmbedStep(slide_path, output, grid.coords, coords_attrs, run_attrs, features, done, rows,
                         resumed, time.perf_counter() - start)

    yield step(slice(0, 0))
    todo = [s for s in batch_order(grid.coords, batch_size, near) if not done[s]]
    batches = iter_patch_batches(slide_path, grid.coords, grid.mpp, grid.patch_size, batch_size,
                                 settings.workers, settings.mpp_override, transform=normalizer, starts=todo)
    bar = progress_bar(progress, n, slide_path.name)
    if resumed:
        bar(resumed)
    embedded = embed_batches(model, batches, n, device=settings.device, precision=settings.precision,
                             tokens=settings.tokens, cancel=cancel, description=slide_path.name,
                             done=resumed)

    def keep(err: BaseException) -> None:
        """Keep the rows done for a resume; never mask ``err`` with a failure to keep them."""
        if key is None or features is None or not done.any():
            return
        try:
            kept = write_partial(output, key, PartialFeatures(features, done))
        except Exception as failure:  # a full or read-only disk: the run's own error matters more
            log.warning("%s: could not keep the %d patches done for a resume: %s", output, int(done.sum()),
                        failure)
            return
        if kept is not None:
            err.kept = f"{int(done.sum())} of {n} patches kept in {kept.name}; run again to resume"  # type: ignore[attr-defined]

    try:
        for first, (pooled, tokens) in zip(todo, embedded, strict=False):
            if features is None:
                features = np.zeros((n, pooled.shape[1]), np.float32)
            rows = slice(first, first + len(pooled))
            features[rows] = pooled
            done[rows] = True
            if tokens is not None:
                token_rows.append((first, tokens))
            bar(int(done.sum()))
            yield step(rows)
    except BaseException as err:
        keep(err)
        raise
    finally:
        bar(None)
        embedded.close()  # the reader threads and their slide handles go now, not at a later GC
        batches.close()
    if features is None:  # a slide of no batches cannot happen (require_patches), but stay whole
        features = np.zeros((n, int(getattr(model, "embed_dim", 0) or 0)), np.float32)
    token_grid = None
    if settings.tokens and token_rows:
        token_grid = np.concatenate([t for _, t in sorted(token_rows, key=lambda item: item[0])])
    seconds = time.perf_counter() - start
    run_attrs["seconds"] = round(seconds, 3)
    try:
        write_features(output, FeatureSet(grid.coords, features, run_attrs, coords_attrs, token_grid),
                       overwrite=overwrite)
    except (OSError, RuntimeError) as err:  # h5py reports a failed write as RuntimeError
        keep(err)  # every row is done: a rerun only writes
        clear = output_error(output, err, "the features file")
        if clear is None:
            raise
        clear.kept = getattr(err, "kept", None)  # type: ignore[attr-defined]
        raise clear from err
    remove_partial(output)
    return SlideEmbedding(slide_path, output, n, seconds, resumed=resumed)


def check_slide(slide_path: str | os.PathLike[str], settings: EmbedSettings | None = None) -> None:
    """What :func:`embed_slide` checks before any work, alone and without a model: the file is a
    slide OpenSlide reads, has an mpp (or an override), has a readable tile and holds one patch.
    Raises :class:`~napari_xmag.slide.SlideError` (and kin) naming the file; ~50 ms."""
    settings = settings or EmbedSettings()
    with Slide(slide_path, mpp=settings.mpp_override) as slide:
        _check_slide(slide, settings)


def _check_slide(slide: Slide, settings: EmbedSettings) -> None:
    slide.require_mpp(f"{settings.mpp:g} µm/px patches cannot be cut")
    slide.check_readable()
    check_patch_fits(slide, settings.mpp, settings.patch_size, settings.tissue_threshold)
    problem = slide.brightfield_problem
    if problem and not settings.allow_non_he:
        raise NotBrightfieldError(
            f"{slide.path}: {problem}. The models are trained on stained (H&E, IHC) brightfield"
            " slides; to embed it anyway: --allow-non-he (EmbedSettings(allow_non_he=True))"
        )
    if problem:
        log.warning("%s: %s; embedded anyway (--allow-non-he): the features describe it as stain", slide.path,
                    problem)


def already_done(
    slide_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], identity: dict[str, Any],
    settings: EmbedSettings | None = None, *, fmt: str = "h5",
) -> SlideEmbedding | None:
    """The finished run of this slide at ``out_dir`` when it was made by the model ``identity``
    names (:func:`~napari_xmag.models.plan.planned_identity`) with these settings, else None:
    so that a rerun skips it before building the model. Without torch: ``auto`` matches a file
    made with ``auto``; any other doubt (another precision, settings, slide) is None, and
    :func:`embed_slide` then decides, with its errors."""
    settings = settings or EmbedSettings()
    slide_path = Path(slide_path)
    output = feature_path(out_dir, slide_path, fmt)
    try:
        if not is_features_file(output):
            return None
        header = read_header(output)
        with Slide(slide_path, mpp=settings.mpp_override) as slide:
            run_attrs = run_attributes(slide, identity, settings, settings.precision)
    except (OSError, ValueError, SlideError):
        return None
    existing = header.attrs
    if _other_slide(existing, run_attrs):
        return None
    if not existing.get("weights_tensors_sha256") and not identity.get("weights_random"):
        return None  # a file from before the tensor hash: its weights are compared once built
    keys = _settings_keys(run_attrs, existing)
    if settings.precision in (existing.get("precision_requested"), existing.get("precision")):
        keys.pop("precision")
    if settings_differ(existing, keys):
        return None
    return SlideEmbedding(slide_path, output, len(header.coords), 0.0, skipped=True)


def finished_patches(output: Path, run_attrs: dict[str, Any], overwrite: bool = False) -> int | None:
    """The patch count of a finished output this run keeps as it is, or None to (re)write it.

    Kept: a features file of ours made from the same slide (size and content fingerprint)
    with the same settings. Anything else at ``output`` raises, naming what is there, unless
    ``overwrite``. Reads the file's header only, not its features.
    """
    if not check_target(output, FEATURES_KIND, overwrite) or not is_features_file(output):
        return None  # nothing there, or something not ours that ``overwrite`` replaces
    header = read_header(output)
    other = _other_slide(header.attrs, run_attrs)
    if other:
        if overwrite:
            return None
        raise OutputExistsError(
            errno.EEXIST,
            f"{output}: holds the features of another slide ({other}), not of {run_attrs['slide_path']};"
            " choose another --out (slides with the same name need separate folders), or pass --overwrite",
        )
    differ = settings_differ(header.attrs, _settings_keys(run_attrs, header.attrs))
    if not differ:
        return len(header.coords)
    if overwrite:
        return None
    what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
    raise SlideError(f"{output}: exists, made with other settings ({what}); pass --overwrite or choose"
                     " another --out")


def _other_slide(existing: dict[str, Any], run_attrs: dict[str, Any]) -> str | None:
    """The slide an existing output was made from, when it is not this run's slide.

    The same size and content fingerprint are the same slide, wherever it lies now; a file of an
    older version (no fingerprint) must name the same path.
    """
    old_print, old_size = existing.get("slide_fingerprint"), existing.get("slide_size")
    if old_print:
        if old_print == run_attrs["slide_fingerprint"] and old_size == run_attrs["slide_size"]:
            return None
        return f"{existing.get('slide_path') or 'unknown'}, {old_size} bytes"
    old_path = str(existing.get("slide_path") or "")
    if old_path and Path(old_path).resolve() != Path(run_attrs["slide_path"]).resolve():
        return old_path
    return None


# ---- checks that fail early, with the cause ---------------------------------------------------
def _check_space(output: Path, patches: int, model: Any, tokens: bool) -> None:
    """Refuse before the forward pass when the arrays alone would not fit in the free space."""
    dim = int(getattr(model, "embed_dim", 0) or 0)
    per_patch = 16 + 4 * dim
    if tokens:
        grid = getattr(model, "grid", (0, 0)) or (0, 0)
        per_patch += 4 * dim * int(grid[0]) * int(grid[1])
    need = patches * per_patch
    try:
        free = shutil.disk_usage(existing_ancestor(output.parent.absolute())).free
    except OSError:
        return
    if free < need:
        raise OutputError(
            errno.ENOSPC,
            f"{output}: not enough space left on the device for the features: about {format_size(need)}"
            f" needed, {format_size(free)} free",
        )


_SETTING_KEYS = (
    "model", "tiny", "weights_source", "weights_sha256", "weights_tensors_sha256", "weights_random", "mpp",
    "patch_size", "stride",
    "tissue_threshold", "mpp_override", "precision", "format_tokens", "stain_norm", "stain_reference",
)


def _settings_keys(attrs: dict[str, Any], existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a rerun must share with ``existing`` to be the same run. The weights are the
    same when their tensors are (``weights_tensors_sha256``: a re-exported file is the same
    model); a file of a version without that key is compared by its file hash."""
    keys = {k: attrs[k] for k in _SETTING_KEYS if k in attrs}
    if existing is None:
        return keys
    keys = same_weights_keys(keys, existing)
    if "stain_norm" not in existing and keys.get("stain_norm") == "none":  # before stain normalisation
        keys.pop("stain_norm", None)
        keys.pop("stain_reference", None)
    return keys


def _partial_identity(run_attrs: dict[str, Any], settings: EmbedSettings) -> dict[str, Any]:
    """What a partial run must share with this one for its rows to be this run's rows: the
    settings, the slide itself (its fingerprint, not its path), the model as a whole, the
    version and where the model runs (another device or torch computes other bits)."""
    import torch  # the model is built: torch is loaded already

    keys = ("slide_fingerprint", "slide_size", "overrides", "embed_dim", "weights_revision", "weights_heads",
            "xmag_version")
    return {**_settings_keys(run_attrs), **{k: run_attrs.get(k) for k in keys},
            "device": resolve_device(settings.device).type, "torch": torch.__version__}


def run_attributes(slide: Slide, identity: dict[str, Any], settings: EmbedSettings, precision: str
                   ) -> dict[str, Any]:
    """What a features file records of the run (also how a rerun recognises it): the model's
    ``identity`` (:func:`~napari_xmag.provenance.model_identity`, overrides as JSON), the slide's,
    the settings, and the ``precision`` they resolved to."""
    who = dict(identity)
    return {
        **who,
        "overrides": json.dumps(who.get("overrides") or {}, sort_keys=True),
        "slide_path": str(slide.path),
        "slide_size": slide.file_size,
        "slide_fingerprint": slide.fingerprint,
        "slide_mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "mpp": settings.mpp,
        "patch_size": settings.patch_size,
        "stride": settings.stride or settings.patch_size,
        "tissue_threshold": settings.tissue_threshold,
        "mpp_override": settings.mpp_override,
        "precision": precision,
        "precision_requested": settings.precision,
        "format_tokens": settings.tokens,
        "allow_non_he": settings.allow_non_he,
        "stain_norm": settings.stain_norm,
        "stain_reference": (str(settings.stain_reference) if settings.stain_reference else "default")
        if settings.stain_norm != "none" else "",
        "xmag_version": __version__,
    }


def resolved_precision(settings: EmbedSettings, random_weights: bool = False) -> str:
    """What ``settings.precision`` means on ``settings.device`` here (``auto``: measured once per
    machine; fp32 for random weights): recorded in the outputs and compared on reruns, so
    ``auto`` and the precision it picked are the same run."""
    return inference_precision(settings.precision, resolve_device(settings.device), random_weights)


def coords_attributes(slide: Slide, grid: Any) -> dict[str, Any]:
    """TRIDENT's patching attributes, plus the exact mpp and level used."""
    base_mag = slide.objective_power or (10.0 / slide.mpp if slide.mpp else None)
    return {
        "patch_size": grid.patch_size,
        "patch_size_level0": round(grid.patch_size_level0),
        "patch_size_level0_exact": float(grid.patch_size_level0),
        "level0_magnification": base_mag,
        "target_magnification": 10.0 / grid.mpp,
        "overlap": grid.patch_size - grid.stride,
        "stride": grid.stride,
        "mpp": grid.mpp,
        "level": grid.level,
        "name": slide.name,
        "level0_width": slide.dimensions[0],
        "level0_height": slide.dimensions[1],
    }
