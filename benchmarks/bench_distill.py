"""Distillation benchmark: a bigger version of the CPU proof, and what the teacher cache buys.

Tiny teacher and student built as in ``tests/distill/`` (random weights, fixed seeds;
the teacher's layer scales at 1.0 so that its vectors depend on the image), on real tissue
with spatially held-out blocks. Prints, measured in one run:

- D1  held-out alignment of the exported EMA student after ``--steps`` steps with two views,
      shared flips (a 4-variant teacher cache) — centred cosine, R² and plain cosine, global
      and local — next to the constant training-mean baseline and the untrained student
- D2  teacher cache: build time (4 flip variants per pair) against the teacher time of one
      uncached epoch (2 views per pair, with jitter), and the epochs after which it pays off
- D3  training pairs/s: uncached (slide reads + teacher on 16 crops per view) vs cached

Usage::

    python benchmarks/bench_distill.py [--slide PATH] [--patch-size 112] [--stride 16]
        [--steps 600] [--width 64] [--lr 2e-3] [--block-um 600] [--holdout 0.15]

``--patch-size 224`` gives XMAG's real fields (448 µm, 16 crops of 224 px); on
CMU-1-Small-Region (1.1 x 1.5 mm) that leaves few pairs on each side of a held-out block, so
use it with a larger slide and ``--block-um 1500``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _slides import CMU1_SMALL

from napari_xmag.distill import PairIndex, TrainConfig, build_teacher_cache, read_log, train
from napari_xmag.models import create_model

ROWS = ("baseline", "before", "final")


def base_config(args: argparse.Namespace, out: Path, **changes) -> TrainConfig:
    options = {
        "slides": [args.slide], "out_dir": out,
        "teacher": "uni2-h", "teacher_weights": "random", "teacher_tiny": True,
        "teacher_overrides": {"init_values": 1.0, "depth": args.teacher_depth},
        "student": "xmag", "student_weights": "random", "student_tiny": True,
        "student_overrides": {
            "img_size": args.patch_size, "embed_dim": args.width, "num_heads": args.width // 32,
        },
        "patch_size": args.patch_size, "crop_size": args.patch_size, "stride": args.stride,
        "batch_size": args.batch_size, "lr": args.lr, "holdout": args.holdout,
        "holdout_block_um": args.block_um,
        "num_workers": args.workers, "cache_workers": args.workers, "progress": False, "log_every": 10,
        "checkpoint_every": 10_000,
    }
    return TrainConfig(**{**options, **changes})


def d2_cache(args: argparse.Namespace, root: Path) -> dict:
    config = base_config(args, root / "probe", steps=1, flips=True)
    index = PairIndex.build(config.slide_entries(), config.pair_settings())
    teacher = create_model("uni2-h", weights="random", tiny=True, overrides=config.teacher_overrides)
    start = time.perf_counter()
    build_teacher_cache(root / "teacher.zarr", index, teacher, flips=True, num_workers=args.workers,
                        progress=False)
    return {"pairs": len(index), "build_s": time.perf_counter() - start}


def d3_speed(args: argparse.Namespace, root: Path, cached: bool) -> float:
    """Median pairs/s over the log windows of a short run (the first window warms up)."""
    changes = {"cache": root / "teacher.zarr", "cache_in_memory": True} if cached else {}
    config = base_config(args, root / f"speed-{cached}", steps=args.speed_steps, flips=True, holdout=0.0,
                         **changes)
    train(config)
    rates = sorted(float(r["pairs_per_s"]) for r in read_log(config.out_dir / "log.csv")[1:])
    return rates[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", type=Path, default=CMU1_SMALL)
    parser.add_argument("--patch-size", type=int, default=112, help="student px = teacher crop px")
    parser.add_argument("--stride", type=int, default=16, help="5x px between pairs")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--speed-steps", type=int, default=40, help="steps of each D3 run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=64, help="student width (a multiple of 32)")
    parser.add_argument("--teacher-depth", type=int, default=2)
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--block-um", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.slide.name},"
          f" {args.patch_size} px fields (5x) vs 4x4 crops of {args.patch_size} px (20x),"
          f" stride {args.stride}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d2 = d2_cache(args, root)
        uncached = d3_speed(args, root, cached=False)
        cached = d3_speed(args, root, cached=True)
        # An uncached epoch runs the teacher on every pair twice (2 views) and reads the slide;
        # a cached one does neither. Break-even: build time / time an uncached epoch loses.
        epoch_uncached = d2["pairs"] / uncached
        epoch_cached = d2["pairs"] / cached
        break_even = d2["build_s"] / max(epoch_uncached - epoch_cached, 1e-9)
        print(f"D2 teacher cache: {d2['pairs']} pairs x 4 flip variants in {d2['build_s']:.1f} s;"
              f" an epoch takes {epoch_uncached:.1f} s uncached, {epoch_cached:.1f} s cached:"
              f" the cache pays off after {break_even:.1f} epochs")
        print(f"D3 training: {uncached:.1f} pairs/s uncached, {cached:.1f} pairs/s cached"
              f" ({cached / uncached:.1f}x)")

        config = base_config(args, root / "run", steps=args.steps, flips=True, views=2,
                             cache=root / "teacher.zarr", cache_in_memory=True)
        start = time.perf_counter()
        result = train(config)
        metrics = result.metrics
        print(f"D1 held-out alignment after {args.steps} steps ({time.perf_counter() - start:.0f} s):"
              f" {metrics['train_pairs']} training / {metrics['heldout_pairs']} held-out pairs")
        print(f"   {'':22}" + "".join(f"{r:>10}" for r in ROWS))
        for key in metrics["final"]:
            print(f"   {key:22}" + "".join(f"{metrics[r][key]:10.3f}" for r in ROWS))
    if args.json:
        final, base = metrics["final"], metrics["baseline"]
        rows = [{"metric": f"D1 held-out {key} (baseline {base[key]:.3f})", "value": final[key],
                 "goal": "> baseline", "pass": final[key] > base[key]} for key in final]
        rows += [{"metric": "D2 teacher cache pays off after epochs", "value": break_even, "goal": "-",
                  "pass": None},
                 {"metric": "D3 cached / uncached training pairs/s", "value": cached / uncached,
                  "goal": "-", "pass": None}]
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
