"""Reader benchmark: chunk-read overhead, time to first frame, pan latency, memory.

Builds a 40000 x 30000 Aperio pyramid from real tissue (CMU-1, mirrored) and prints
ratios measured in one run, then a summary table against the napari-wsi 1.3.0 anchors
measured on the same machine.

Usage::

    xvfb-run -a python benchmarks/bench_reader.py [--slide PATH] [--keep DIR]

``--slide`` reuses a slide built earlier (``--keep`` keeps the one built now). Each part
runs in a fresh subprocess so that caches and memory of one do not leak into another.
Without a display (and no ``xvfb-run`` to start one) the napari parts are skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _slides import CMU1_SMALL, benchmark_slide

TILE = 240
WINDOW = 1024
MB = 1024 * 1024
ROUNDS = 5  # best of, per measurement


# ---- 1. chunk read overhead ---------------------------------------------------------------
def _best_times(runs: dict, rounds: int = ROUNDS) -> dict:
    """Shortest wall and CPU time of each run over ``rounds`` interleaved rounds.

    Interleaving spreads the machine's slow spells over all runs alike; the minimum keeps
    the overhead and drops the noise. CPU time (all threads) shows the overhead that
    threads hide in wall time.
    """
    best = {name: [float("inf"), float("inf")] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            best[name][0] = min(best[name][0], time.perf_counter() - wall)
            best[name][1] = min(best[name][1], time.process_time() - cpu)
    return best


def _raw_tiles(osr, level: int, ds: float, tiles) -> None:
    for col, row in tiles:
        # np.asarray: the reference also ends with pixels in an array, as ours does
        np.asarray(osr.read_region((round(col * TILE * ds), round(row * TILE * ds)), level, (TILE, TILE)))


def _window_tiles(y: int, x: int) -> list[tuple[int, int]]:
    return [
        (col, row)
        for row in range(y // TILE, (y + WINDOW - 1) // TILE + 1)
        for col in range(x // TILE, (x + WINDOW - 1) // TILE + 1)
    ]


def _random_positions(rng, n: int, height: int, width: int) -> list[tuple[int, int]]:
    return list(zip(rng.integers(0, height, n), rng.integers(0, width, n), strict=True))


def _measure_level(slide, raw, level: int, rng, n_tiles: int = 300, n_windows: int = 20) -> dict:
    info = slide.levels[level]
    pyr, arr, ds = slide.pyramid[level], slide.level_array(level), info.downsample
    tiles = [(x, y) for y, x in _random_positions(rng, n_tiles, info.height // TILE, info.width // TILE)]
    windows = _random_positions(rng, n_windows, info.height - WINDOW, info.width - WINDOW)
    window_tiles = [t for y, x in windows for t in _window_tiles(y, x)]

    def ours_chunks():
        for col, row in tiles:
            np.asarray(pyr[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE])

    def ours_windows_dask():
        for y, x in windows:
            np.asarray(pyr[y : y + WINDOW, x : x + WINDOW])

    def ours_windows_array():
        for y, x in windows:
            arr[y : y + WINDOW, x : x + WINDOW]

    runs = {
        "raw_chunks": lambda: _raw_tiles(raw, level, ds, tiles),
        "ours_chunks": ours_chunks,
        "raw_windows": lambda: _raw_tiles(raw, level, ds, window_tiles),
        "ours_windows_dask": ours_windows_dask,
        "ours_windows_array": ours_windows_array,
    }
    counts = {"n_tiles": n_tiles, "n_windows": n_windows, "n_window_tiles": len(window_tiles)}
    return _best_times(runs) | counts


def measure_chunks(path: str) -> dict:
    """Ours (dask chunk, dask window, LevelArray window) vs raw OpenSlide, both uncached."""
    import openslide

    from napari_xmag.slide import Slide

    slide = Slide(path)
    raw = openslide.OpenSlide(path)
    raw.set_cache(openslide.OpenSlideCache(0))
    rng = np.random.default_rng(0)
    out = {f"level{level}": _measure_level(slide, raw, level, rng) for level in (0, 1)}
    slide.close()
    raw.close()
    return out


def report_chunks(res: dict) -> dict:
    cores = os.cpu_count()
    print("\n[1] Chunk read overhead: ours / raw OpenSlide.read_region + np.asarray of the same native")
    print(f"    tiles, wall time (best of {ROUNDS} interleaved rounds), no tile cache on either side")
    print("    (XMAG_TILE_CACHE_MB=0, OpenSlideCache(0)). Raw reads tiles one by one on one thread; ours")
    print(f"    may use threads (dask's scheduler in (a)/(b), the Slide's pool in (c); {cores} cores here),")
    print("    so the CPU-time ratio (all threads) is shown too")
    summary = {}
    for level in (0, 1):
        r = res[f"level{level}"]
        n, nw = r["n_tiles"], r["n_windows"]
        raw_w = r["raw_windows"]
        rows = (
            ("(a)", "1 chunk per compute, dask", r["ours_chunks"], r["raw_chunks"], n, "tile"),
            ("(b dask)", f"{WINDOW}px window, dask", r["ours_windows_dask"], raw_w, nw, "window"),
            ("(c array)", f"{WINDOW}px window, LevelArray", r["ours_windows_array"], raw_w, nw, "window"),
        )
        for key, label, (ours, ours_cpu), (raw, raw_cpu), count, unit in rows:
            ratio = ours / raw
            print(
                f"  level {level} ({key[1]}) {label:28} {ratio:5.2f}x   ours {ours / count * 1e3:6.2f} ms"
                f"  raw {raw / count * 1e3:6.2f} ms  per {unit} ({count} {unit}s);"
                f" CPU time {ours_cpu / raw_cpu:4.2f}x"
            )
            name = "chunk overhead" if unit == "tile" else "window overhead"
            summary[f"{name} L{level} {key}"] = ratio
        print(f"          ({nw} windows touch {r['n_window_tiles']} native tiles, read one by one for raw)")
    return summary


# ---- 4. memory -------------------------------------------------------------------------------
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


def _rss_after_malloc_trim() -> float | None:
    """RSS once glibc hands freed heap back: tells allocator retention from live objects."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _rss_mb()


def measure_memory(path: str) -> dict:
    import dask.array  # noqa: F401 (its modules are not memory the slide could give back)

    from napari_xmag.slide import Slide

    gc.collect()
    before = _rss_mb()
    slide = Slide(path)
    pyr = slide.pyramid
    whole = np.asarray(pyr[1])  # the whole 5x level, 10000 x 7500, kept while the windows are read
    rng = np.random.default_rng(1)
    h, w = slide.levels[0].height, slide.levels[0].width
    for y, x in _random_positions(rng, 50, h - WINDOW, w - WINDOW):
        window = np.asarray(pyr[0][y : y + WINDOW, x : x + WINDOW])  # one at a time, as a viewer would
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    alive = (whole.nbytes + window.nbytes) / MB
    del whole, window, pyr
    slide.close()
    del slide
    gc.collect()
    after = _rss_mb()
    trimmed = _rss_after_malloc_trim()
    return {"before": before, "peak": peak, "after": after, "alive": alive, "after_trim": trimmed}


def report_memory(res: dict) -> dict:
    held = res["after"] - res["before"]
    print("\n[4] Memory (fresh process, default 32 MB tile cache): whole level 1 via dask, then 50")
    print(f"    level-0 {WINDOW}px windows via dask, one at a time (before open = after all imports)")
    print(
        f"  RSS before open {res['before']:.0f} MB, peak (ru_maxrss) {res['peak']:.0f} MB"
        f" (arrays alive at the end: {res['alive']:.0f} MB)"
    )
    print(
        f"  RSS after del + close + gc.collect {res['after']:.0f} MB:"
        f" {held:.0f} MB still held above before-open"
    )
    if res["after_trim"] is not None:
        print(
            f"  (diagnostic, not counted: after glibc malloc_trim(0) {res['after_trim']:.0f} MB,"
            f" {res['after_trim'] - res['before']:.0f} MB above before-open)"
        )
    return {"peak RSS MB": res["peak"], "held after close MB": held}


# ---- 2 + 3. napari ---------------------------------------------------------------------------
def tissue_fraction(image: np.ndarray, min_saturation: float = 0.15) -> float:
    """Fraction of pixels coloured like stained tissue (not white glass, not black canvas)."""
    rgb = image[..., :3].astype(np.float32)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0)
    return float(np.mean((saturation > min_saturation) & (hi > 40)))


def _wait_for_tissue(viewer, app, timeout: float = 30.0) -> np.ndarray:
    deadline = time.perf_counter() + timeout
    while True:
        shot = viewer.screenshot(canvas_only=True, flash=False)
        if tissue_fraction(shot) > 0.05:
            return shot
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no tissue on the canvas after {timeout} s")
        app.processEvents()


def _camera(viewer):
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera here
    return scene.camera if scene is not None else viewer.camera


def _view_loaded(layer, camera, canvas_hw) -> bool:
    """The layer holds level-0 data covering the whole visible canvas."""
    if layer.data_level != 0:
        return False
    half = np.asarray(canvas_hw) / 2 / camera.zoom
    center = np.asarray(camera.center[-2:])
    lo = layer.world_to_data(center - half)[-2:]
    hi = layer.world_to_data(center + half)[-2:]
    corners = layer.corner_pixels[:, -2:]
    return bool(np.all(corners[0] <= np.floor(lo) + 1) and np.all(np.ceil(hi) - 1 <= corners[1]))


def _slides_of(layer) -> list:
    """The Slides behind the layer's dask graphs (LevelArrays are inlined), to count tile reads."""
    from napari_xmag.slide import LevelArray

    found = {}
    for level in layer.data:
        for task in dict(level.dask).values():
            for arg in getattr(task, "args", ()) or ():
                inner = getattr(arg, "value", arg)
                if isinstance(inner, LevelArray):
                    found[id(inner._slide)] = inner._slide
    return list(found.values())


def measure_napari(path: str, n_pans: int = 30) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 1000)  # fills xvfb-run's 1280x1024 screen
    app = QApplication.instance()
    app.processEvents()
    camera = _camera(viewer)

    # warm-up on a different slide: imports, plugin discovery and GL shaders, but no pixels
    # (and no napari dask-cache keys) shared with the timed one
    viewer.open(str(CMU1_SMALL), plugin="napari-xmag")
    _wait_for_tissue(viewer, app)
    viewer.layers.clear()
    gc.collect()
    app.processEvents()

    t0 = time.perf_counter()
    (layer,) = viewer.open(path, plugin="napari-xmag")
    first = _wait_for_tissue(viewer, app)
    t_open = time.perf_counter() - t0
    open_level = layer.data_level

    # one screen pixel = one level-0 pixel (the layer is in µm); pan down a column of
    # tissue (CMU-1 x ~ 1300 px) by half a screen each time, so every frame is new tissue
    mpp = float(layer.scale[-1])
    camera.zoom = 1 / mpp
    canvas_hw = first.shape[:2]
    center = np.array([1000.0, 1300.0]) * mpp
    camera.center = tuple(center)
    _wait_for_tissue(viewer, app)
    app.processEvents()
    slides = _slides_of(layer)

    step = np.array([canvas_hw[0] / 2 * mpp, 0.0])
    times, reads, shots, fractions, levels = [], [], [], [], []
    for _ in range(n_pans):
        center = center + step
        reads_before = sum(s.tile_reads for s in slides)
        t0 = time.perf_counter()
        camera.center = tuple(center)
        n_shots = 0
        while True:
            shot = viewer.screenshot(canvas_only=True, flash=False)
            n_shots += 1
            if _view_loaded(layer, camera, canvas_hw):
                break
            app.processEvents()
        times.append(time.perf_counter() - t0)
        reads.append(sum(s.tile_reads for s in slides) - reads_before)
        shots.append(n_shots)
        fractions.append(tissue_fraction(shot))
        levels.append(layer.data_level)
        app.processEvents()  # the paint the camera change queued; not part of the next pan
    viewer.close()
    return {
        "viewing_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "open_s": t_open,
        "open_level": open_level,
        "canvas_hw": list(canvas_hw),
        "pan_ms": [t * 1e3 for t in times],
        "pan_reads": reads,
        "pan_shots": shots,
        "pan_tissue": fractions,
        "pan_levels": levels,
        "tile_reads_counted": bool(slides),
    }


def report_napari(res: dict) -> dict:
    print(
        f"\n[2] viewer.open -> first canvas screenshot with tissue (warm, after opening another slide):"
        f" {res['open_s']:.3f} s (shown at level {res['open_level']})"
    )
    pans = np.asarray(res["pan_ms"])
    median, p90 = float(np.median(pans)), float(np.percentile(pans, 90))
    height, width = res["canvas_hw"]
    print(
        f"\n[3] Pan at full resolution ({len(pans)} pans of half a screen, canvas {width}x{height},"
        " 1 screen px = 1 level-0 px):"
    )
    print(f"  median {median:.1f} ms, p90 {p90:.1f} ms, min {pans.min():.1f}, max {pans.max():.1f}")
    tissue = res["pan_tissue"]
    print(
        f"  levels shown: {sorted(set(res['pan_levels']))}; tissue fraction per frame:"
        f" min {min(tissue):.2f} median {statistics.median(tissue):.2f}"
    )
    if res["tile_reads_counted"]:
        reads = res["pan_reads"]
        print(
            f"  native tiles read per pan: median {statistics.median(reads):.0f}, min {min(reads)},"
            f" max {max(reads)} (the whole view: the layer skips napari's dask cache; tiles read"
            " before come from the store's tile cache)"
        )
    print(f"  screenshots per pan until the layer held the new view: max {max(res['pan_shots'])}")
    print(f"  peak RSS of the viewing process (napari, Qt, the slide, {len(pans)} pans):"
          f" {res['viewing_peak_mb']:.0f} MB")
    if min(res["pan_tissue"]) <= 0.05 or set(res["pan_levels"]) != {0}:
        print("  WARNING: some frames show no tissue or not level 0; the pan timing is not valid")
    return {"open to first tissue frame s": res["open_s"], "pan median ms": median, "pan p90 ms": p90,
            "viewing peak RSS MB": res["viewing_peak_mb"]}


# ---- driver ---------------------------------------------------------------------------------
PARTS = {"chunks": measure_chunks, "memory": measure_memory, "napari": measure_napari}

# metric: (anchor, napari-wsi 1.3.0 on this machine; goal), lower is better
TARGETS = {
    "chunk overhead L0 (a)": ("9.2-9.7x", 1.10),
    "window overhead L0 (b dask)": ("9.2-9.7x", 1.10),
    "window overhead L0 (c array)": ("9.2-9.7x", 1.10),
    "chunk overhead L1 (a)": ("2.6-2.8x", 1.10),
    "window overhead L1 (b dask)": ("2.6-2.8x", 1.10),
    "window overhead L1 (c array)": ("2.6-2.8x", 1.10),
    "open to first tissue frame s": ("1.3-1.4 s", 1.0),
    "pan median ms": ("106-129 ms", 60.0),
    "pan p90 ms": ("-", None),
    "viewing peak RSS MB": ("-", 500.0),
    "peak RSS MB": ("700 MB", 500.0),
    "held after close MB": ("433 MB", 32.0),  # "returned": at most the tile cache's bound
}


def run_part(part: str, slide: Path, env_extra: dict | None = None, prefix: tuple = ()) -> dict:
    """Run one measurement in a fresh interpreter; it prints its result as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "XMAG_TILE_CACHE_MB"}
    env.update(env_extra or {})
    proc = subprocess.run(
        [*prefix, sys.executable, __file__, "--part", part, "--slide", str(slide)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"part {part!r} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def display_prefix() -> tuple | None:
    """How to run the napari part: as is with a display, under xvfb-run, or not at all."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return ()
    if shutil.which("xvfb-run"):
        return ("xvfb-run", "-a")
    return None


def print_summary(results: dict) -> list[dict]:
    """Print the table; returns its rows for run_all.py."""
    rows = []
    print(f"\n{'metric':32} {'ours':>9} {'anchor':>11} {'goal':>7}  result")
    for name, (anchor, goal) in TARGETS.items():
        if name not in results:
            print(f"{name:32} {'skipped':>9} {anchor:>11}")
            continue
        value = results[name]
        verdict = "-" if goal is None else ("PASS" if value <= goal else "MISS")
        goal_text = "-" if goal is None else f"<={goal:g}"
        print(f"{name:32} {value:9.2f} {anchor:>11} {goal_text:>7}  {verdict}")
        rows.append({"metric": f"reader: {name}", "value": value, "goal": goal_text,
                     "pass": None if goal is None else value <= goal})
    print("(anchors: napari-wsi 1.3.0 on this machine; 'held after close' counts as returned when at")
    print(" most the 32 MB OpenSlide tile cache, which outlives the slides, is still held)")
    return rows


def _cpu_seconds() -> tuple[float, float, float]:
    """(wall, CPU busy on the whole machine, CPU used by this run) in seconds."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    mine = sum(
        u.ru_utime + u.ru_stime
        for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    return time.perf_counter(), busy, mine


def _report_other_load(start: tuple[float, float, float]) -> None:
    """Other processes' CPU use during the run: on a small machine it skews threaded timings."""
    wall, busy, mine = (end - begin for end, begin in zip(_cpu_seconds(), start, strict=True))
    other = max(0.0, busy - mine)
    share = other / wall
    print(
        f"CPU used by other processes during this run: {other:.0f} s in {wall:.0f} s ({share:.0%} of a core)"
    )
    if share > 0.1:
        print("  WARNING: the machine was shared; threaded timings above are slower and noisier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="reuse a slide built earlier")
    parser.add_argument("--keep", type=Path, help="build the slide into DIR and keep it")
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slide is not None and not args.slide.is_file():
        parser.error(f"--slide {args.slide}: no such file")

    if args.part:  # child process: measure, print JSON
        print(json.dumps(PARTS[args.part](str(args.slide))))
        return

    cpu_start = _cpu_seconds()
    with benchmark_slide(args.slide, args.keep) as slide:
        results = {}
        results.update(report_chunks(run_part("chunks", slide, {"XMAG_TILE_CACHE_MB": "0"})))
        prefix = display_prefix()
        if prefix is None:
            print("\n[2], [3] skipped: no DISPLAY, and no xvfb-run to start one (install Xvfb)")
        else:
            results.update(report_napari(run_part("napari", slide, prefix=prefix)))
        results.update(report_memory(run_part("memory", slide)))
        rows = print_summary(results)
        _report_other_load(cpu_start)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
