"""Whole-slide benchmark: time and memory of a real-size slide, end to end, on this CPU.

Builds (or reuses) the 40000 x 30000 Aperio pyramid made from real tissue (CMU-1, mirrored)
and measures, each part in a fresh process so that no part's memory counts in another's:

- M1  tissue detection: seconds and peak RSS            (goal <= 1 s, <= 300 MB; LazySlide 20 s, 5.2 GB)
- M2  embedding the whole slide with the default settings (xmag, fp32): peak RSS   (goal < 1.5 GB)
- P8  the same slide with the CPU fast path (--precision int8 on the CPU), end to end: tissue,
      reading, forward and writing the h5                (goal <= 120 s for ~900 patches at 5x)
- M3  a batch of 20 slides in one process: RSS after each slide must not grow  (TRIDENT: 90 GB
      after 100 slides). A tiny model keeps this part short; the model's memory is fixed and
      M2 measures it.

Viewing memory (napari, panning at full resolution) is part [3] of bench_reader.py.

Usage::

    python benchmarks/bench_wholeslide.py [--slide PATH] [--keep DIR] [--skip-fp32] [--json OUT]

Weights are random (none can be downloaded here); time and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _slides import benchmark_slide

from napari_xmag._memory import RssSampler, rss_mb

MB = 1024 * 1024
BATCH_SLIDES = 20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- parts, each run in a fresh process ----------------------------------------------------
def part_tissue(slide_path: str) -> dict:
    from napari_xmag.slide import Slide
    from napari_xmag.tiling import patch_grid, tissue_mask

    baseline = rss_mb()
    times = []
    with Slide(slide_path) as slide, RssSampler(interval=0.05) as sampler:
        for _ in range(3):  # best of 3: the first also pays the tile cache's cold start
            start = time.perf_counter()
            mask = tissue_mask(slide)
            times.append(time.perf_counter() - start)
        grid = patch_grid(slide, mpp=2.0, mask=mask)
    return {"seconds_first": times[0], "seconds_best": min(times), "baseline_mb": baseline,
            "peak_mb": max(sampler.peak, _peak_mb()), "tissue_fraction": mask.tissue_fraction,
            "patches_5x": len(grid)}


def part_embed(slide_path: str, precision: str) -> dict:
    import torch

    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model
    from napari_xmag.models.precision import prepare_model

    baseline = rss_mb()
    with tempfile.TemporaryDirectory() as out, RssSampler(interval=0.05) as sampler:
        start = time.perf_counter()
        # as `xmag embed --precision P` does: convert once, keep only the converted model
        model, _, _ = prepare_model(create_model("xmag", weights="random"), "cpu", precision)
        gc.collect()  # as the CLI does: the dropped fp32 model sits in reference cycles
        result = embed_slide(slide_path, model, out, EmbedSettings(precision=precision), progress=False)
        seconds = time.perf_counter() - start
    return {"precision": precision, "patches": result.patches, "seconds": seconds,
            "embed_seconds": result.seconds, "baseline_mb": baseline,
            "peak_mb": max(sampler.peak, _peak_mb()), "threads": torch.get_num_threads()}


def part_batch(slide_path: str) -> dict:
    """20 slides (links to one file, each its own output) through one model in one process."""
    import gc

    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.models import create_model

    model = create_model("xmag", weights="random", tiny=True)
    rss, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for i in range(BATCH_SLIDES):
            link = Path(tmp) / f"slide-{i:02d}.svs"
            link.symlink_to(Path(slide_path).resolve())
            start = time.perf_counter()
            embed_slide(link, model, out, EmbedSettings(), progress=False)
            seconds.append(time.perf_counter() - start)
            gc.collect()
            rss.append(rss_mb())
    return {"rss_mb": rss, "seconds": seconds, "peak_mb": _peak_mb()}


PARTS = {
    "tissue": part_tissue,
    "embed-fp32": lambda p: part_embed(p, "fp32"),
    "embed-int8": lambda p: part_embed(p, "int8"),
    "batch": part_batch,
}


def run_part(part: str, slide: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--part", part, "--slide", str(slide)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"part {part!r} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- driver -------------------------------------------------------------------------------
def measure(slide: Path, skip_fp32: bool = False) -> list[dict]:
    """Run every part; returns summary rows (metric, value, unit, goal, higher-is-better)."""
    rows = []
    t = run_part("tissue", slide)
    print(f"M1 tissue detection: {t['seconds_best']:.2f} s (first call {t['seconds_first']:.2f} s),"
          f" peak RSS {t['peak_mb']:.0f} MB of which {t['baseline_mb']:.0f} MB imports;"
          f" tissue {t['tissue_fraction']:.1%}, {t['patches_5x']} patches at 5x", flush=True)
    rows += [_row("M1 tissue detection s", t["seconds_first"], "<=", 1.0),
             _row("M1 tissue detection peak RSS MB", t["peak_mb"], "<=", 300)]
    if not skip_fp32:
        e = run_part("embed-fp32", slide)
        print(f"M2 embed, default settings (fp32, {e['threads']} threads): {e['patches']} patches in"
              f" {e['seconds']:.0f} s, peak RSS {e['peak_mb']:.0f} MB", flush=True)
        rows.append(_row("M2 embed peak RSS MB (default)", e["peak_mb"], "<", 1536))
    f = run_part("embed-int8", slide)
    print(f"P8 embed, CPU fast path (int8): {f['patches']} patches in {f['seconds']:.1f} s end to end"
          f" ({f['patches'] / f['seconds']:.2f} patches/s), peak RSS {f['peak_mb']:.0f} MB", flush=True)
    rows += [_row(f"P8 whole slide s ({f['patches']} patches, int8)", f["seconds"], "<=", 120),
             _row("M2 embed peak RSS MB (int8)", f["peak_mb"], "<", 1536)]
    b = run_part("batch", slide)
    rss = b["rss_mb"]
    growth = rss[-1] - rss[1]  # after the first slide: imports, the model and the pools are warm
    print(f"M3 batch of {len(rss)} slides, one process: RSS after each slide (MB) "
          + " ".join(f"{r:.0f}" for r in rss)
          + f"; growth slide 2 -> {len(rss)}: {growth:+.0f} MB; {sum(b['seconds']):.0f} s", flush=True)
    rows.append(_row(f"M3 RSS growth slide 2->{len(rss)} MB", growth, "<=", 50))
    return rows


def _row(metric: str, value: float, op: str, goal: float) -> dict:
    ok = {"<=": value <= goal, "<": value < goal, ">=": value >= goal}[op]
    return {"metric": metric, "value": value, "goal": f"{op} {goal:g}", "pass": bool(ok)}


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'metric':44} {'ours':>10} {'goal':>10}  result")
    for r in rows:
        print(f"{r['metric']:44} {r['value']:10.2f} {r['goal']:>10}  {'PASS' if r['pass'] else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="reuse a slide built earlier")
    parser.add_argument("--keep", type=Path, help="build the slide into DIR and keep it")
    parser.add_argument("--skip-fp32", action="store_true", help="skip M2 at fp32 (~5 min on 2 cores)")
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:  # child process: measure, print JSON
        print(json.dumps(PARTS[args.part](str(args.slide))))
        return
    with benchmark_slide(args.slide, args.keep) as slide:
        print(f"{slide} ({slide.stat().st_size / MB:.0f} MB), {os.cpu_count()} cores")
        rows = measure(slide, args.skip_fp32)
        print_rows(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
