"""The ``xmag`` command line: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmag",
        description="Cross-magnification (XMAG) whole-slide pathology: slides, embedding, distillation,"
        " teacher/student comparison, MIL evaluation and maps.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="print a slide's levels, mpp and which level serves 20x and 5x")
    info.add_argument("slide", type=Path, help="a slide file OpenSlide can open")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--mpp-override", type=float, default=None, metavar="UM",
                      help="level-0 µm/px to use instead of what the file records")
    info.set_defaults(func=_cmd_info)

    sample = sub.add_parser("sample", help="write the procedural sample slide and print its path")
    sample.add_argument("--out", type=Path, default=None, help="folder (default: the user cache)")
    sample.set_defaults(func=_cmd_sample)

    embed = sub.add_parser(
        "embed", help="embed the tissue patches of slides into TRIDENT-style feature files",
        description="Cut each slide's tissue into patches at an exact µm/px, embed them with a"
        " model, and write OUT/<slide>.h5 (coords, features). Finished slides are skipped.",
    )
    embed.add_argument("slides", nargs="+", type=Path, metavar="SLIDE")
    _add_embed_options(embed)
    embed.add_argument("--no-progress", action="store_true")
    embed.set_defaults(func=_cmd_embed)

    batch = sub.add_parser(
        "batch", help="embed many slides on a dask cluster (local or remote), with a run manifest",
        description="Embed slides as `xmag embed` does, one dask task per slide: on a local cluster of"
        " --local-workers processes, or on the cluster of --scheduler. OUT/manifest.json records every"
        " slide (done / skipped / failed, reason, patches, times, worker, memory); a rerun skips what is"
        " done and retries what failed. Exit code 1 when any slide failed.",
    )
    batch.add_argument("slides", nargs="+", type=Path, metavar="SLIDES",
                       help="slide files, folders of slides, or .txt / .csv lists of slides")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    where.add_argument("--local-workers", type=int, default=None, metavar="N",
                       help="worker processes of the local cluster (default: cores // 4, 1 to 4)")
    batch.add_argument("--resources", action="append", default=None, metavar="NAME=N",
                       help="what every task needs, e.g. GPU=1 (workers declare it: --resources GPU=1)")
    batch.add_argument("--torch-threads", type=int, default=None, metavar="N",
                       help="torch threads per task (default: cores // workers on a local cluster)")
    _add_embed_options(batch)
    batch.set_defaults(func=_cmd_batch)

    compare = sub.add_parser(
        "compare", help="compare a 5x student with a 20x teacher on the same tissue",
        description="Embed each 5x patch with the student and its 4x4 20x crops with the teacher;"
        " write OUT/compare.h5 and OUT/report.json (per-patch cosine, CKA, ARI, timings).",
    )
    compare.add_argument("slide", type=Path, metavar="SLIDE")
    compare.add_argument("--student", default="xmag",
                         help="registry name, path or hf-hub:ORG/NAME (default: xmag)")
    compare.add_argument("--teacher", default="uni2-h",
                         help="registry name, path or hf-hub:ORG/NAME (default: uni2-h)")
    compare.add_argument("--student-weights", default="auto", help="auto, random (tests only) or a file")
    compare.add_argument("--teacher-weights", default="auto", help="auto, random (tests only) or a file")
    compare.add_argument("--roi", default=None, metavar="X,Y,W,H",
                         help="level-0 px; only 5x patches wholly inside it (default: the whole slide)")
    compare.add_argument("--out", type=Path, required=True, help="output folder")
    compare.add_argument("--mapping", default="auto", choices=["auto", "head", "ridge"],
                         help="cosine through the student's head or a held-out ridge map (default: auto)")
    compare.add_argument("--clusters", type=int, default=8, help="k-means K on both sides (default: 8)")
    compare.add_argument("--tissue-threshold", type=float, default=0.25)
    compare.add_argument("--mpp-override", type=float, default=None, metavar="UM",
                         help="level-0 µm/px for slides that do not record it")
    compare.add_argument("--batch-size", type=int, default=32)
    compare.add_argument("--workers", type=int, default=2, help="slide-reading threads")
    compare.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    compare.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    compare.add_argument("--no-progress", action="store_true")
    compare.add_argument("--overwrite", action="store_true",
                         help="replace a report.json / compare.h5 in OUT that is not a comparison of ours")
    compare.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: small models
    compare.set_defaults(func=_cmd_compare)

    ev = sub.add_parser(
        "eval", help="cross-validated linear probe and ABMIL on feature files",
        description="Stratified k-fold evaluation of feature files against labels: a logistic-"
        "regression probe on patches and/or gated-attention MIL (ABMIL) on slides. Writes"
        " OUT/report.json, OUT/attention/<slide>.h5 and OUT/abmil/fold<k>.safetensors.",
    )
    ev.add_argument("--csv", type=Path, required=True, metavar="LABELS.csv",
                    help="slide,label (one row per slide) or slide,x,y,label (one row per patch)")
    ev.add_argument("--features", type=Path, required=True, metavar="DIR",
                    help="folder of <slide>.h5 / .zarr feature files (xmag embed, TRIDENT)")
    ev.add_argument("--out", type=Path, required=True, help="output folder")
    ev.add_argument("--method", default="both", choices=["probe", "abmil", "both"])
    ev.add_argument("--folds", type=int, default=5)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--epochs", type=int, default=20, help="ABMIL epochs (default: 20)")
    ev.add_argument("--lr", type=float, default=2e-4, help="ABMIL learning rate (default: 2e-4)")
    ev.add_argument("--max-patches-per-slide", type=int, default=1000, metavar="N",
                    help="probe with slide labels: at most N random patches per slide (default: 1000)")
    ev.add_argument("--device", default="cpu", help="ABMIL device (default: cpu)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace files in OUT (report.json, attention/, abmil/) that napari-xmag did not write")
    ev.set_defaults(func=_cmd_eval)

    ft = sub.add_parser(
        "finetune", help="fine-tune the student's last blocks with ABMIL on 5x slide bags",
        description="End-to-end: per fold, train the student's last N blocks jointly with ABMIL on"
        " whole-slide 5x bags, loss = cross-entropy + lambda * XMAG distillation against the"
        " teacher's 20x crops. Writes OUT/fold<k>/student, OUT/fold<k>/abmil.safetensors,"
        " OUT/attention/<slide>.h5 and OUT/report.json.",
    )
    ft.add_argument("--csv", type=Path, required=True, metavar="LABELS.csv",
                    help="slide,label; slide: a path (absolute or relative to the CSV) or a name in --slides")
    ft.add_argument("--slides", type=Path, default=None, metavar="DIR", help="folder holding the slides")
    ft.add_argument("--out", type=Path, required=True, help="output folder")
    ft.add_argument("--student", default="xmag",
                    help="registry name, path or hf-hub:ORG/NAME (default: xmag)")
    ft.add_argument("--student-weights", default="auto", help="auto, random (tests only) or a file")
    ft.add_argument("--teacher", default="uni2-h",
                    help="registry name, path or hf-hub:ORG/NAME (default: uni2-h)")
    ft.add_argument("--teacher-weights", default="auto", help="auto, random (tests only) or a file")
    ft.add_argument("--teacher-cache", type=Path, default=None, metavar="DIR",
                    help="teacher targets <slide>.h5 (default: OUT/teacher_cache; reused when present)")
    ft.add_argument("--blocks", type=int, default=2, help="train the student's last N blocks (default: 2)")
    ft.add_argument("--lambda", dest="distill_weight", type=float, default=1.0,
                    help="weight of the distillation loss; 0 needs no teacher (default: 1.0)")
    ft.add_argument("--epochs", type=int, default=3)
    ft.add_argument("--max-patches", type=int, default=64,
                    help="patches per slide per step, a random subset (default: 64)")
    ft.add_argument("--lr", type=float, default=2e-4, help="ABMIL and heads (default: 2e-4)")
    ft.add_argument("--backbone-lr", type=float, default=1e-5, help="student blocks (default: 1e-5)")
    ft.add_argument("--checkpointing", action="store_true",
                    help="gradient checkpointing of the trained blocks")
    ft.add_argument("--folds", type=int, default=5)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--tissue-threshold", type=float, default=0.25)
    ft.add_argument("--mpp-override", type=float, default=None, metavar="UM",
                    help="level-0 µm/px for slides that do not record it")
    ft.add_argument("--batch-size", type=int, default=32, help="inference batches (default: 32)")
    ft.add_argument("--workers", type=int, default=2, help="slide-reading threads")
    ft.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ft.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ft.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT")
    ft.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: small models
    ft.set_defaults(func=_cmd_finetune)

    distill = sub.add_parser(
        "distill", help="distil a 20x teacher into a 5x student (XMAG) on a set of slides",
        description="Train the 5x student to predict the frozen 20x teacher on paired fields of"
        " view; write OUT/student (the EMA student with heads, usable as --model), checkpoints"
        " and logs. Options not given come from --config, else the XMAG defaults. Several"
        " GPUs: torchrun --nproc-per-node N -m napari_xmag.cli distill ... (docs/distillation.md).",
    )
    distill.add_argument("slides", nargs="*", metavar="SLIDES",
                         help="a folder of slides, a CSV (slide[,mpp_override]) or slide files")
    distill.add_argument("--out", default=None, help="output folder (required unless in --config)")
    distill.add_argument("--config", type=Path, default=None, metavar="JSON",
                         help="a TrainConfig as JSON; the options given here override it")
    distill.add_argument("--teacher", default=None, help="default: uni2-h")
    distill.add_argument("--teacher-weights", default=None, help="auto (default), or a file")
    distill.add_argument("--student", default=None, help="default: xmag")
    distill.add_argument("--student-weights", default=None,
                         help="auto (default: the XMAG weights), or a file (e.g. DINOv2 ViT-B/14)")
    distill.add_argument("--epochs", type=int, default=None, help="default: 10")
    distill.add_argument("--steps", type=int, default=None, help="total steps (overrides --epochs)")
    distill.add_argument("--batch-size", type=int, default=None, help="pairs per step per GPU (default: 32)")
    distill.add_argument("--lr", type=float, default=None, help="default: 5e-4")
    distill.add_argument("--weight-decay", type=float, default=None, help="default: 0.05")
    distill.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of the run")
    distill.add_argument("--ema-decay", type=float, default=None, help="default: 0.999")
    distill.add_argument("--clip-grad", type=float, default=None, help="default: 1.0")
    distill.add_argument("--seed", type=int, default=None, help="default: 0")
    distill.add_argument("--stride", type=int, default=None,
                         help="5x px between pairs (default: the patch size, no overlap)")
    distill.add_argument("--five-x-source", default=None, choices=["read", "downsample"],
                         help="5x image read from the slide (default) or the 20x region downsampled")
    distill.add_argument("--no-flips", dest="flips", action="store_false", default=None)
    distill.add_argument("--no-jitter", dest="jitter", action="store_false", default=None)
    distill.add_argument("--cache", default=None, metavar="ZARR",
                         help="teacher-target cache, built on first use (runs without colour jitter)")
    distill.add_argument("--cache-in-memory", action="store_true", default=None,
                         help="read the whole teacher cache into RAM (small caches)")
    distill.add_argument("--holdout", type=float, default=None,
                         help="fraction of pairs held out by spatial blocks for evaluation (default: 0)")
    distill.add_argument("--eval-every", type=int, default=None, metavar="STEPS")
    distill.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    distill.add_argument("--precision", default=None, choices=["auto", "fp32", "fp16", "bf16"])
    distill.add_argument("--workers", dest="num_workers", type=int, default=None,
                         help="DataLoader worker processes (default: 4)")
    distill.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS")
    distill.add_argument("--log-every", type=int, default=None, metavar="STEPS")
    distill.add_argument("--resume", action="store_true",
                         help="continue from OUT/checkpoint.pt (from step 0 when there is none yet)")
    distill.add_argument("--overwrite", action="store_true",
                         help="start again in an OUT that holds an earlier run (its outputs are replaced;"
                         " other files there are left alone)")
    distill.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    distill.set_defaults(func=_cmd_distill)

    maps = sub.add_parser(
        "maps", help="turn a features file into a map aligned with the slide (OME-Zarr or GeoJSON)",
        description="Render a features file as a slide-aligned map: pca (RGB), kmeans (labels), probe"
        " (class probabilities + segmentation), attention (an ABMIL attention file) or cosine (an"
        " xmag compare folder). OUT ending in .geojson writes the label map as QuPath GeoJSON,"
        " anything else an OME-Zarr (NGFF 0.4).",
    )
    maps.add_argument("features", type=Path, nargs="?", metavar="FEATURES",
                      help="a features file (.h5 / .zarr); optional for --kind cosine")
    maps.add_argument("--kind", required=True, metavar="KIND",
                      help="pca, kmeans, probe, attention or cosine")
    maps.add_argument("--out", type=Path, required=True, help="NAME.ome.zarr, or NAME.geojson for labels")
    maps.add_argument("--clusters", type=int, default=8, help="k-means K (default: 8)")
    maps.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    maps.add_argument("--probe", type=Path, default=None, metavar="FILE",
                      help="a probe: .npz (napari_xmag.maps.save_probe) or a scikit-learn .skops")
    maps.add_argument("--comparison", type=Path, default=None, metavar="DIR", help="an xmag compare folder")
    maps.add_argument("--attention", type=Path, default=None, metavar="FILE",
                      help="an attention h5 (coords, attention), e.g. from xmag eval")
    maps.add_argument("--attention-values", default="percentile",
                      help="percentile (rank in [0, 1], default), attention or logits")
    maps.add_argument("--slide-mpp", type=float, default=None, metavar="UM",
                      help="the slide's level-0 µm/px, for features files that do not record it")
    maps.add_argument("--trust-pickle", action="store_true",
                      help="load a .joblib/.pkl probe: a pickle runs code when loaded, so only one you made")
    maps.add_argument("--overwrite", action="store_true",
                      help="replace what is at OUT even if napari-xmag did not write it")
    maps.set_defaults(func=_cmd_maps)

    demo = sub.add_parser(
        "demo", help="the offline demo: sample slide, 5x embedding, every map and export",
        description="Make the sample slide, embed it with the 5x student (xmag; random weights,"
        " said loudly, when its real ones are not available), and write the PCA and k-means maps"
        " (OME-Zarr), the k-means labels (QuPath GeoJSON), the features (h5) and the tissue mask.",
    )
    demo.add_argument("--out", type=Path, default=None, help="folder (default: <user cache>/demo)")
    demo.add_argument("--with-teacher", action="store_true",
                      help="also compare with the 20x teacher (uni2-h) on a 2-patch ROI (slow on a CPU)")
    demo.add_argument("--clusters", type=int, default=8, help="k-means K (default: 8)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    demo.add_argument("--napari", action="store_true", help="then open everything in napari")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: small models
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    """The options ``embed`` and ``batch`` share (see :func:`_embed_settings`)."""
    parser.add_argument("--model", default="xmag",
                        help="registry name, local path or hf-hub:ORG/NAME (default: xmag)")
    parser.add_argument("--weights", default="auto",
                        help="auto (the model's own: hub or path), random (tests/benchmarks only), or a file")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--mpp", default="2.0", help="target µm/px, or 5x / 20x (default: 2.0 = 5x)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--stride", type=int, default=None, help="default: the patch size (no overlap)")
    parser.add_argument("--tissue-threshold", type=float, default=0.25,
                        help="fraction of a patch that must be tissue (default: 0.25)")
    parser.add_argument("--mpp-override", type=float, default=None, metavar="UM",
                        help="level-0 µm/px for slides that do not record it")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="patches per forward pass (default: 8 on the CPU, where small batches"
                        " run fastest, 64 on a GPU)")
    parser.add_argument("--workers", type=int, default=2, help="slide-reading threads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                        help="fp32 (default); int8 is the CPU fast path (about 3x, cosine to fp32"
                        " > 0.99), bf16 about 2x on CPUs with bf16 units; bf16 autocast on a GPU")
    parser.add_argument("--format", default="h5", choices=["h5", "zarr"])
    parser.add_argument("--tokens", action="store_true", help="also keep patch-token grids (zarr)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what is at an output: feature files made with other settings or"
                        " from another slide, and files napari-xmag did not write")


def _embed_settings(args: argparse.Namespace) -> Any:
    from .embed import EmbedSettings

    return EmbedSettings(
        mpp=args.mpp, patch_size=args.patch_size, stride=args.stride,
        tissue_threshold=args.tissue_threshold, mpp_override=args.mpp_override,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, tokens=args.tokens,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .slide import SlideError

    try:
        return int(args.func(args) or 0)
    except (SlideError, *_user_errors()) as err:
        if os.environ.get("XMAG_DEBUG"):
            raise
        print(f"xmag {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        if os.environ.get("XMAG_DEBUG"):
            raise
        print(f"xmag {args.command}: error: out of memory; nothing was written (XMAG_MEMORY_BUDGET_MB"
              " bounds what one input may allocate)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xmag {args.command}: interrupted", file=sys.stderr)
        return 130


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: one line, non-zero exit, no traceback."""
    from ._atomic import OutputError
    from .embed import EmbedCancelled
    from .features import FeatureFileError

    errors: list[type[BaseException]] = [EmbedCancelled, FeatureFileError, OutputError, ValueError]
    try:
        from .models import WeightsError

        errors.append(WeightsError)
    except ImportError:  # torch is optional for slide-only commands
        pass
    return tuple(errors)


def _open(path: Path, mpp: float | None = None) -> Any:
    from .slide import Slide

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slide = Slide(path, mpp=mpp)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return slide


def format_info(summary: dict[str, Any]) -> str:
    def um(v: float | None) -> str:
        return "unknown" if v is None else f"{v:.4g} µm/px"

    lines = [
        f"slide:            {summary['path']}",
        f"vendor:           {summary['vendor'] or 'unknown'}",
        f"dimensions:       {summary['dimensions'][0]} x {summary['dimensions'][1]} px (level 0)",
        f"mpp:              x {um(summary['mpp_x'])}, y {um(summary['mpp_y'])}"
        + (f"  [{summary['mpp_source']}]" if summary["mpp_source"] else ""),
        f"objective power:  {summary['objective_power'] or 'unknown'}",
        f"associated:       {', '.join(summary['associated_images']) or 'none'}",
        "levels:",
    ]
    for lv in summary["levels"]:
        lines.append(
            f"  {lv['level']}: {lv['width']:>6} x {lv['height']:<6} downsample {lv['downsample']:<8.4g}"
            f" tile {lv['tile'][0]}x{lv['tile'][1]}  {um(lv['mpp'])}"
        )
    mags = summary.get("magnifications")
    if mags:
        for name, m in mags.items():
            if m["factor"] == 1.0:
                how = "as is"
            elif m["factor"] > 1:
                how = f"reduced by {m['factor']:.4g}"
            else:
                how = f"enlarged by {1 / m['factor']:.4g} (the slide is coarser than {name})"
            lines.append(f"{name} ({m['mpp']} µm/px):  level {m['level']}, {how}")
    else:
        lines.append("20x / 5x:         unknown without an mpp (use --mpp-override)")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    with _open(args.slide, args.mpp_override) as slide:
        slide.check_readable()  # a slide whose tiles cannot be decoded is a bad file too
        summary = slide.summary()
    print(json.dumps(summary, indent=2) if args.json else format_info(summary))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .sample import sample_slide_path

    print(sample_slide_path(args.out))
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from ._atomic import check_output_folder
    from .embed import embed_slide, prepare_model
    from .features import unique_feature_paths
    from .models import create_model

    check_output_folder(args.out)  # before the model is built or any slide read
    unique_feature_paths(args.slides, args.out, args.format)  # two slides, one output: refused now

    settings = _embed_settings(args)
    # converted once, and the fp32 weights let go (-340 MB for int8)
    model, _, _ = prepare_model(create_model(args.model, weights=args.weights), settings.device,
                                settings.precision)
    gc.collect()  # timm modules hold reference cycles: the dropped fp32 model goes only now
    if model.weights.random:
        print("warning: RANDOM WEIGHTS: embeddings carry no meaning (recorded in every output)",
              file=sys.stderr)
    for path in args.slides:
        result = embed_slide(path, model, args.out, settings, fmt=args.format,
                             overwrite=args.overwrite, progress=not args.no_progress)
        print(result.summary())
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch

    settings = _embed_settings(args)
    if args.weights == "random":
        print("warning: RANDOM WEIGHTS: embeddings carry no meaning (recorded in every output)",
              file=sys.stderr)
    done = [0]

    def report(entry: dict[str, Any]) -> None:
        done[0] += 1
        if entry["status"] == "failed":
            what = entry["reason"]
        elif entry["status"] == "skipped" and not entry.get("seconds"):
            what = f"{entry['patches']} patches, {entry['reason']}"
        else:
            what = f"{entry['patches']} patches in {entry['seconds']:.1f} s on {entry['worker']}"
        print(f"[{done[0]}] {entry['status']:<7} {entry['name']}: {what}", flush=True)

    result = run_batch(
        args.slides, args.out, model=args.model, weights=args.weights, settings=settings, fmt=args.format,
        overwrite=args.overwrite, scheduler=args.scheduler, local_workers=args.local_workers,
        resources=args.resources, torch_threads=args.torch_threads, on_slide=report,
    )
    print(result.summary())
    return 0 if result.ok else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import check_comparison_folder, compare_slide, parse_roi
    from .models import create_model

    roi = parse_roi(args.roi)  # a malformed ROI fails before any model is built
    check_comparison_folder(args.out, args.overwrite)  # so does an output that is not ours
    student = create_model(args.student, weights=args.student_weights, tiny=args.tiny)
    teacher = create_model(args.teacher, weights=args.teacher_weights, tiny=args.tiny)
    for side, model in (("student", student), ("teacher", teacher)):
        if model.weights.random:
            print(f"warning: RANDOM WEIGHTS ({side}): the comparison carries no meaning", file=sys.stderr)
    result = compare_slide(
        args.slide, student, teacher, args.out, roi, clusters=args.clusters, mapping=args.mapping,
        tissue_threshold=args.tissue_threshold, mpp_override=args.mpp_override,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, progress=not args.no_progress, overwrite=args.overwrite,
    )
    print(result.summary())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .mil import ABMILSettings, run_eval

    abmil = ABMILSettings(epochs=args.epochs, lr=args.lr, device=args.device)
    report = run_eval(args.csv, args.features, args.out, method=args.method, folds=args.folds,
                      seed=args.seed, abmil=abmil, max_patches_per_slide=args.max_patches_per_slide,
                      log=print, overwrite=args.overwrite)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{report['slides']} slides, {len(report['classes'])} classes, {args.folds} folds"
          f" -> {args.out / 'report.json'}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .mil import FinetuneSettings, run_finetune

    settings = FinetuneSettings(
        blocks=args.blocks, distill_weight=args.distill_weight, epochs=args.epochs,
        max_patches=args.max_patches, lr=args.lr, backbone_lr=args.backbone_lr,
        checkpointing=args.checkpointing, tissue_threshold=args.tissue_threshold,
        mpp_override=args.mpp_override, batch_size=args.batch_size, workers=args.workers,
        device=args.device, precision=args.precision,
    )
    report = run_finetune(
        args.csv, args.out, slides_dir=args.slides, student=args.student,
        student_weights=args.student_weights, teacher=args.teacher, teacher_weights=args.teacher_weights,
        teacher_cache=args.teacher_cache, folds=args.folds, seed=args.seed, settings=settings,
        overwrite=args.overwrite, tiny=args.tiny, log=print,
    )
    for side in ("student", "teacher"):
        if report[side] and report[side]["weights"]["random"]:
            print(f"warning: RANDOM WEIGHTS ({side}): the result carries no meaning", file=sys.stderr)
    print(f"{report['slides']} slides, {args.folds} folds in {report['seconds']:.1f} s -> {args.out}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import TrainConfig, train

    names = (
        "teacher", "teacher_weights", "student", "student_weights", "epochs", "steps", "batch_size",
        "lr", "weight_decay", "warmup_steps", "ema_decay", "clip_grad", "seed", "stride",
        "five_x_source", "flips", "jitter", "cache", "cache_in_memory", "holdout", "eval_every", "device",
        "precision", "num_workers", "checkpoint_every", "log_every", "progress",
    )
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.slides:
        options["slides"] = [str(p) for p in args.slides] if len(args.slides) > 1 else args.slides[0]
    if args.out is not None:
        options["out_dir"] = args.out
    if args.config is not None:
        config = TrainConfig.from_json(args.config, **options)
    elif "slides" in options and "out_dir" in options:
        config = TrainConfig(**options)
    else:
        raise ValueError("give SLIDES and --out (or a --config that names them)")
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if result.rank != 0:  # the other ranks of a torchrun launch stay quiet
        return 0
    if result.export_dir is None:
        print(f"stopped at step {result.steps} of {result.total_steps}; continue with --resume")
        return 0
    print(f"distilled {result.steps} steps -> {result.export_dir} (use it as --model)")
    if result.metrics:
        for name in ("baseline", "before", "final"):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics[name].items())
            print(f"held-out {name}: {scores}")
    return 0


def _cmd_maps(args: argparse.Namespace) -> int:
    import time

    from ._atomic import check_target
    from .maps import make_maps, read_attention_values
    from .writers import save_maps
    from .writers.geojson import GEOJSON_KIND
    from .writers.ome_zarr import MAP_STORE_KIND

    start = time.perf_counter()
    _check_not_an_input(args.out, args.features, args.probe, args.comparison, args.attention)
    kind = GEOJSON_KIND if str(args.out).lower().endswith(".geojson") else MAP_STORE_KIND
    check_target(args.out, kind, args.overwrite)  # before any map is computed
    attention = read_attention_values(args.attention, args.attention_values) if args.attention else None
    maps = make_maps(
        args.features, args.kind, clusters=args.clusters, seed=args.seed, probe=args.probe,
        comparison=args.comparison, attention=attention, slide_mpp=args.slide_mpp,
        trust_pickle=args.trust_pickle,
    )
    out = save_maps(args.out, maps, overwrite=args.overwrite)
    if any(m.metadata.get("weights_random") for m in maps):
        print("warning: RANDOM WEIGHTS: the features carry no meaning, nor does the map", file=sys.stderr)
    for m in maps:
        shape = "x".join(str(n) for n in m.data.shape)
        print(f"{m.name}: {m.kind} {shape}, {m.scale[1]:.4g} µm per cell")
    print(f"-> {out} ({time.perf_counter() - start:.2f} s)")
    return 0


def _check_not_an_input(out: Path, *inputs: Path | None) -> None:
    """An output path that is one of the command's inputs (or holds one) is refused, always."""
    target = out.absolute()
    for given in inputs:
        if given is None:
            continue
        source = given.absolute()
        if os.path.lexists(target) and os.path.lexists(source) and (
            os.path.samefile(target, source) or source.is_relative_to(target)
        ):
            raise ValueError(f"{out}: is the input {given}; write the output elsewhere")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_out_dir, demo_viewer, run_demo

    out = args.out or default_out_dir()
    print(f"napari-xmag demo -> {out}", flush=True)
    result = run_demo(out, with_teacher=args.with_teacher, tiny=args.tiny, clusters=args.clusters,
                      device=args.device, progress=not args.no_progress)
    if result.weights_random:
        print("warning: RANDOM WEIGHTS: no real xmag weights found (offline?); the demo's maps carry"
              " no meaning and are labelled RANDOM-WEIGHTS", file=sys.stderr)
    print(result.summary())
    with _open(result.slide) as slide:
        print(f"\nthe sample slide:\n{format_info(slide.summary())}")
    if args.napari:
        import napari

        demo_viewer(result)
        napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
