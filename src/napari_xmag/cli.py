"""The ``xmag`` command line: argument parsing and printing only; the work is in the library.

Every subcommand has its own ``_add_<command>``; options that several commands share come from
one group function each (:func:`_slide_options`, :func:`_model_options`, :func:`_runtime_options`,
:func:`_output_options`), so an option means one thing everywhere. The library is imported in
the command functions, so that ``xmag --help``, ``xmag info`` and ``xmag sample`` start without
torch, timm or napari.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .models.precision import PRECISIONS

DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHTS_HELP = ("auto (the model's own: a local path or its hub repository), random (for trying the"
                " plumbing), or a file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmag",
        description="Cross-magnification (XMAG) whole-slide pathology: slides, embedding, distillation,"
        " teacher/student comparison, MIL evaluation and maps.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_info, _add_sample, _add_models, _add_embed, _add_batch, _add_compare, _add_eval,
                _add_finetune, _add_distill, _add_maps, _add_search, _add_demo):
        add(sub)
    return parser


# ---- shared option groups -------------------------------------------------------------------
def _slide_options(p: argparse.ArgumentParser, *, tissue: bool = True) -> None:
    """--mpp-override (and --tissue-threshold): how a slide is read and cut."""
    p.add_argument("--mpp-override", type=float, default=None, metavar="UM",
                   help="level-0 µm/px to use instead of what the file records (slides that record none)")
    if tissue:
        p.add_argument("--tissue-threshold", type=float, default=0.25,
                       help="fraction of a patch that must be tissue (default: 0.25)")


def _model_options(p: argparse.ArgumentParser, side: str, default: str | None) -> None:
    """--model/--weights, or --student/--student-weights, --teacher/--teacher-weights."""
    name = "model" if side == "model" else side
    shown = f" (default: {default})" if default else ""
    p.add_argument(f"--{name}", default=default, help=f"registry name, local path or hf-hub:ORG/NAME{shown}")
    flag = "--weights" if side == "model" else f"--{side}-weights"
    p.add_argument(flag, default="auto" if default else None, help=WEIGHTS_HELP)


def _runtime_options(p: argparse.ArgumentParser, *, batch_help: str, workers: bool = True,
                     defaults: bool = True) -> None:
    """--device, --precision, --batch-size (and --workers): where and how the models run."""
    p.add_argument("--device", default="auto" if defaults else None, choices=DEVICES,
                   help="auto (default): CUDA, else MPS, else the CPU")
    p.add_argument("--precision", default="auto" if defaults else None, choices=PRECISIONS,
                   help="auto (default): on a GPU bf16 autocast; on a CPU the fastest of bf16 (where the CPU"
                   " has bf16 units: 3-5x fp32 with AMX), int8 (VNNI) and fp32, measured once per machine and"
                   " cached (XMAG_CPU_PRECISION=fp32|bf16|int8 sets it); fp32; bf16; fp16 (GPU); int8 (CPU"
                   " inference: dynamic quantisation)")
    p.add_argument("--batch-size", type=int, default=None, help=batch_help)
    if workers:
        p.add_argument("--workers", type=int, default=2, help="slide-reading threads (default: 2)")


def _output_options(p: argparse.ArgumentParser, what: str, overwrite: str, *, required: bool = True) -> None:
    """--out and --overwrite."""
    p.add_argument("--out", type=Path, required=required, default=None, help=what)
    p.add_argument("--overwrite", action="store_true", help=overwrite)


def _stain_options(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--stain-norm and --stain-reference: a slide's stain brought to a reference's (stain.py)."""
    p.add_argument("--stain-norm", default="none" if defaults else None,
                   choices=("none", "macenko", "reinhard"),
                   help="normalise each slide's stain to a reference, fitted once per slide on its tissue"
                   " (default: none)")
    p.add_argument("--stain-reference", default=None, metavar="IMAGE",
                   help="the reference image for --stain-norm (default: the bundled H&E reference)")


def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---- the subcommands ----------------------------------------------------------------------------
def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="print a slide's levels, mpp and which level serves 20x and 5x")
    p.add_argument("slide", type=Path, help="a slide file OpenSlide can open")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _slide_options(p, tissue=False)
    p.set_defaults(func=_cmd_info)


def _add_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="write the procedural sample slide and print its path")
    p.add_argument("--out", type=Path, default=None, help="folder (default: the user cache)")
    p.set_defaults(func=_cmd_sample)


def _add_models(sub: Any) -> None:
    p = sub.add_parser(
        "models", help="list the model zoo, or say what a weights file or folder is (--inspect)",
        description="Without arguments: every registered model (role, architecture, parameters, embedding,"
        " native µm/px, licence, gated, where its weights are looked for and whether they are in the local"
        " Hugging Face cache). With --inspect PATH: what a checkpoint or folder is, the backbones and heads"
        " in it, and which registered model it fits, i.e. how --model/--weights would load it. Nothing in"
        " the file is run.",
    )
    p.add_argument("--inspect", type=Path, default=None, metavar="PATH", help="a weights file or folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_models)


def _embed_options(p: argparse.ArgumentParser) -> None:
    """What ``embed`` and ``batch`` share (see :func:`_embed_settings`)."""
    _model_options(p, "model", "xmag")
    _output_options(p, "output folder", "replace what is at an output: feature files made with other"
                    " settings or from another slide, and files napari-xmag did not write")
    p.add_argument("--mpp", default="2.0", help="target µm/px, or 5x / 20x (default: 2.0 = 5x)")
    p.add_argument("--patch-size", type=int, default=224)
    p.add_argument("--stride", type=int, default=None, help="default: the patch size (no overlap)")
    _slide_options(p)
    _runtime_options(p, batch_help="patches per forward pass (default: 8 on the CPU, where small batches"
                     " run fastest, 64 on a GPU)")
    p.add_argument("--format", default="h5", choices=["h5", "zarr"])
    p.add_argument("--tokens", action="store_true", help="also keep patch-token grids (zarr)")
    _stain_options(p)
    p.add_argument("--allow-non-he", action="store_true",
                   help="embed slides that do not look like stained brightfield tissue (a dark,"
                   " fluorescence background), with a warning; refused otherwise")


def _add_embed(sub: Any) -> None:
    p = sub.add_parser(
        "embed", help="embed the tissue patches of slides into TRIDENT-style feature files",
        description="Cut each slide's tissue into patches at an exact µm/px, embed them with a"
        " model, and write OUT/<slide>.h5 (coords, features). Finished slides are skipped.",
    )
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE")
    _embed_options(p)
    _progress_option(p)
    p.set_defaults(func=_cmd_embed)


def _add_batch(sub: Any) -> None:
    p = sub.add_parser(
        "batch", help="embed many slides on a dask cluster (local or remote), with a run manifest",
        description="Embed slides as `xmag embed` does, one dask task per slide: on a local cluster of"
        " --local-workers processes, or on the cluster of --scheduler. OUT/manifest.json records every"
        " slide (done / skipped / failed, reason, patches, times, worker, memory); a rerun skips what is"
        " done and retries what failed. Exit code 1 when any slide failed.",
    )
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDES",
                   help="slide files, folders of slides, or .txt / .csv lists of slides")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    where.add_argument("--local-workers", type=int, default=None, metavar="N",
                       help="worker processes of the local cluster (default: cores // 4, 1 to 4)")
    p.add_argument("--resources", action="append", default=None, metavar="NAME=N",
                   help="what every task needs, e.g. GPU=1 (workers declare it: --resources GPU=1)")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch threads per task (default: cores // workers on a local cluster)")
    _embed_options(p)
    p.set_defaults(func=_cmd_batch)


def _add_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare", help="compare a 5x student with a 20x teacher on the same tissue",
        description="Embed each 5x patch with the student and its 4x4 20x crops with the teacher;"
        " write OUT/compare.h5 and OUT/report.json (per-patch cosine, CKA, ARI, timings).",
    )
    p.add_argument("slide", type=Path, metavar="SLIDE")
    _model_options(p, "student", "xmag")
    _model_options(p, "teacher", "uni2-h")
    p.add_argument("--roi", default=None, metavar="X,Y,W,H",
                   help="level-0 px; only 5x patches wholly inside it (default: the whole slide)")
    _output_options(p, "output folder", "replace a report.json / compare.h5 in OUT that is not a"
                    " comparison of ours")
    p.add_argument("--mapping", default="auto", choices=["auto", "head", "ridge"],
                   help="cosine through the student's head or a held-out ridge map (default: auto)")
    p.add_argument("--clusters", type=int, default=8, help="k-means K on both sides (default: 8)")
    _slide_options(p)
    _stain_options(p)
    _runtime_options(p, batch_help="patches (and teacher crops) per forward pass (default: 32)")
    _progress_option(p)
    p.set_defaults(func=_cmd_compare)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="cross-validated linear probe and ABMIL on feature files",
        description="Stratified k-fold evaluation of feature files against labels: a logistic-"
        "regression probe on patches and/or gated-attention MIL (ABMIL) on slides. Writes"
        " OUT/report.json, OUT/attention/<slide>.h5 and OUT/abmil/fold<k>.safetensors.",
    )
    p.add_argument("--csv", type=Path, required=True, metavar="LABELS.csv",
                   help="slide,label (one row per slide) or slide,x,y,label (one row per patch)")
    p.add_argument("--features", type=Path, required=True, metavar="DIR",
                   help="folder of <slide>.h5 / .zarr feature files (xmag embed, TRIDENT)")
    _output_options(p, "output folder", "replace files in OUT (report.json, attention/, abmil/) that"
                    " napari-xmag did not write")
    p.add_argument("--method", default="both", choices=["probe", "abmil", "both"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20, help="ABMIL epochs (default: 20)")
    p.add_argument("--lr", type=float, default=2e-4, help="ABMIL learning rate (default: 2e-4)")
    p.add_argument("--max-patches-per-slide", type=int, default=1000, metavar="N",
                   help="probe with slide labels: at most N random patches per slide (default: 1000)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="ABMIL device (default: cpu)")
    p.set_defaults(func=_cmd_eval)


def _add_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the student's last blocks with ABMIL on 5x slide bags",
        description="End-to-end: per fold, train the student's last N blocks jointly with ABMIL on"
        " whole-slide 5x bags, loss = cross-entropy + lambda * XMAG distillation against the"
        " teacher's 20x crops. Writes OUT/fold<k>/student, OUT/fold<k>/abmil.safetensors,"
        " OUT/attention/<slide>.h5 and OUT/report.json.",
    )
    p.add_argument("--csv", type=Path, required=True, metavar="LABELS.csv",
                   help="slide,label; slide: a path (absolute or relative to the CSV) or a name in --slides")
    p.add_argument("--slides", type=Path, default=None, metavar="DIR", help="folder holding the slides")
    _output_options(p, "output folder", "replace a finished run in OUT")
    _model_options(p, "student", "xmag")
    _model_options(p, "teacher", "uni2-h")
    p.add_argument("--teacher-cache", type=Path, default=None, metavar="DIR",
                   help="teacher targets <slide>.zarr (default: OUT/teacher_cache; reused when present)")
    p.add_argument("--blocks", type=int, default=2, help="train the student's last N blocks (default: 2)")
    p.add_argument("--lambda", dest="distill_weight", type=float, default=1.0,
                   help="weight of the distillation loss; 0 needs no teacher (default: 1.0)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-patches", type=int, default=64,
                   help="patches per slide per step, a random subset (default: 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="ABMIL and heads (default: 2e-4)")
    p.add_argument("--backbone-lr", type=float, default=1e-5, help="student blocks (default: 1e-5)")
    p.add_argument("--checkpointing", action="store_true",
                   help="gradient checkpointing of the trained blocks")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    _slide_options(p)
    _runtime_options(p, batch_help="inference batches (default: 32)")
    p.set_defaults(func=_cmd_finetune)


def _add_distill(sub: Any) -> None:
    p = sub.add_parser(
        "distill", help="distil a 20x teacher into a 5x student (XMAG) on a set of slides",
        description="Train the 5x student to predict the frozen 20x teacher on paired fields of"
        " view; write OUT/student (the EMA student with heads, usable as --model), checkpoints"
        " and logs. Options not given come from --config, else the XMAG defaults. Several"
        " GPUs: torchrun --nproc-per-node N -m napari_xmag.cli distill ... (docs/distillation.md).",
    )
    p.add_argument("slides", nargs="*", metavar="SLIDES",
                   help="a folder of slides, a CSV (slide[,mpp_override]) or slide files")
    _output_options(p, "output folder (required unless in --config)", "start again in an OUT that holds"
                    " an earlier run (its outputs are replaced; other files there are left alone)",
                    required=False)
    p.add_argument("--config", type=Path, default=None, metavar="JSON",
                   help="a TrainConfig as JSON; the options given here override it")
    p.add_argument("--recipe", default=None, choices=["xmag", "official"],
                   help="the settings to start from: xmag (ours, default) or official (the released"
                   " trainer's:"
                   " batch 1152, linear warm-up over the run, jitter p=0.5 torchvision-style, Lanczos 5x,"
                   " constant EMA, decay on every parameter, DINOv2 start; docs/distillation.md); the"
                   " options given here override it")
    _model_options(p, "teacher", None)
    _model_options(p, "student", None)
    p.add_argument("--epochs", type=int, default=None, help="default: 10")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides --epochs)")
    p.add_argument("--effective-batch", type=int, default=None, metavar="PAIRS",
                   help="pairs per optimiser step over all processes (default: --batch-size x processes;"
                   " official: 1152)")
    p.add_argument("--batch-scaling", default=None, choices=["accumulate", "lr"],
                   help="reach --effective-batch by gradient accumulation (default) or by scaling --lr to"
                   " the real batch")
    p.add_argument("--lr", type=float, default=None, help="at the effective batch (default: 5e-4)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 0.05")
    p.add_argument("--schedule", default=None, choices=["warmup-cosine", "linear"],
                   help="warm-up then cosine (default) or the released linear warm-up")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="default: 5%% of the run (warmup-cosine), all of it (linear)")
    p.add_argument("--ema-decay", type=float, default=None, help="default: 0.999")
    p.add_argument("--clip-grad", type=float, default=None, help="default: 1.0")
    p.add_argument("--seed", type=int, default=None, help="default: 0")
    p.add_argument("--stride", type=int, default=None,
                   help="5x px between pairs (default: the patch size, no overlap)")
    p.add_argument("--five-x-source", default=None, choices=["read", "downsample"],
                   help="5x image read from the slide (default) or the 20x region downsampled")
    p.add_argument("--no-flips", dest="flips", action="store_false", default=None)
    p.add_argument("--no-jitter", dest="jitter", action="store_false", default=None)
    p.add_argument("--jitter-p", type=float, default=None, metavar="P",
                   help="chance a view's colours are augmented (default: 1; official: 0.5)")
    p.add_argument("--stain-augment", type=float, default=None, metavar="SIGMA",
                   help="HED stain augmentation strength, e.g. 0.05 (default: 0, off)")
    _stain_options(p, defaults=False)
    p.add_argument("--cache", default=None, metavar="ZARR",
                   help="teacher-target cache, built on first use (jittered views run the teacher live; our"
                   " recipe turns jitter off with a cache unless --jitter-p is below 1)")
    p.add_argument("--cache-in-memory", action="store_true", default=None,
                   help="read the whole teacher cache into RAM (small caches)")
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of pairs held out by spatial blocks for evaluation (default: 0)")
    p.add_argument("--eval-every", type=int, default=None, metavar="STEPS")
    _runtime_options(p, batch_help="pairs per step per GPU (default: 32)", workers=False, defaults=False)
    p.add_argument("--workers", dest="num_workers", type=int, default=None,
                   help="DataLoader worker processes (default: 4)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS")
    p.add_argument("--log-every", type=int, default=None, metavar="STEPS")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (from step 0 when there is none yet)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=_cmd_distill)


def _add_maps(sub: Any) -> None:
    p = sub.add_parser(
        "maps", help="turn a features file into a map aligned with the slide (OME-Zarr or GeoJSON)",
        description="Render a features file as a slide-aligned map: pca (RGB), kmeans (labels), probe"
        " (class probabilities + segmentation), attention (an ABMIL attention file) or cosine (an"
        " xmag compare folder). OUT ending in .geojson writes the label map as QuPath GeoJSON,"
        " anything else an OME-Zarr (NGFF 0.4).",
    )
    p.add_argument("features", type=Path, nargs="?", metavar="FEATURES",
                   help="a features file (.h5 / .zarr); optional for --kind cosine")
    p.add_argument("--kind", required=True, metavar="KIND", help="pca, kmeans, probe, attention or cosine")
    _output_options(p, "NAME.ome.zarr, or NAME.geojson for labels",
                    "replace what is at OUT even if napari-xmag did not write it")
    p.add_argument("--clusters", type=int, default=8, help="k-means K (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    p.add_argument("--probe", type=Path, default=None, metavar="FILE",
                   help="a probe: .npz (napari_xmag.maps.save_probe) or a scikit-learn .skops")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a .joblib/.pkl probe: a pickle runs code when loaded, so only one you made")
    p.add_argument("--comparison", type=Path, default=None, metavar="DIR", help="an xmag compare folder")
    p.add_argument("--attention", type=Path, default=None, metavar="FILE",
                   help="an attention h5 (coords, attention), e.g. from xmag eval")
    p.add_argument("--attention-values", default="percentile",
                   help="percentile (rank in [0, 1], default), attention or logits")
    p.add_argument("--slide-mpp", type=float, default=None, metavar="UM",
                   help="the slide's level-0 µm/px, for features files that do not record it")
    p.set_defaults(func=_cmd_maps)


def _add_search(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="find the tissue most like a query region in a folder of feature files",
        description="Query by example: the cosine similarity of every patch of FEATURES_DIR (an xmag"
        " embed or xmag batch output) to a query; the top K are printed and written as CSV. The query"
        " is a QUERY.json (from --save-query), or made from --slide at --x, --y (level-0 px): the patch"
        " under the point, or with --size the patches of a square of that side centred there. A first"
        " search caches a normalised copy of the features (--cache); later ones read only that.",
    )
    p.add_argument("query", type=Path, nargs="?", default=None, metavar="QUERY.json",
                   help="a saved query (or give --slide, --x and --y)")
    p.add_argument("features_dir", type=Path, metavar="FEATURES_DIR",
                   help="folder of <slide>.h5 / .zarr feature files, all of one model")
    p.add_argument("--slide", type=Path, default=None, metavar="S",
                   help="the query's slide (its features are looked up in FEATURES_DIR) or features file")
    p.add_argument("--x", type=float, default=None, help="level-0 x of the query's centre")
    p.add_argument("--y", type=float, default=None, help="level-0 y of the query's centre")
    p.add_argument("--size", type=float, default=None, metavar="UM",
                   help="side of a square query region in µm centred on (x, y) (default: the patch under"
                   " the point)")
    p.add_argument("--mode", default="mean", choices=("mean", "prototypes"),
                   help="mean: one query, the region's mean embedding (default); prototypes: a patch's"
                   " score is its best cosine to any patch of the region")
    p.add_argument("--top", type=int, default=10, metavar="K", help="hits to list (default: 10)")
    p.add_argument("--index", default="auto", choices=("auto", "exact", "faiss"),
                   help="auto (default): exact, or the faiss index (napari-xmag[search]) past 1e9 values;"
                   " listed scores are exact either way")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="where the normalised features (and the index) are kept (default: the user cache)")
    _output_options(p, "the CSV of the hits (default: ./search-<slide>-<x>-<y>.csv)",
                    "replace a file at --out or --save-query that napari-xmag did not write", required=False)
    p.add_argument("--save-query", type=Path, default=None, metavar="QUERY.json",
                   help="also save the query, to search with it again")
    p.set_defaults(func=_cmd_search)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="the offline demo: sample slide, 5x embedding, every map and export",
        description="Make the sample slide, embed it with the 5x student (xmag; random weights,"
        " said loudly, when its real ones are not available), and write the PCA and k-means maps"
        " (OME-Zarr), the k-means labels (QuPath GeoJSON), the features (h5) and the tissue mask.",
    )
    p.add_argument("--out", type=Path, default=None, help="folder (default: <user cache>/demo)")
    p.add_argument("--with-teacher", action="store_true",
                   help="also compare with the 20x teacher (uni2-h) on a 2-patch ROI (slow on a CPU)")
    p.add_argument("--clusters", type=int, default=8, help="k-means K (default: 8)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--napari", action="store_true", help="then open everything in napari")
    _progress_option(p)
    p.set_defaults(func=_cmd_demo)


def _embed_settings(args: argparse.Namespace) -> Any:
    from .embed import EmbedSettings  # on demand: --help needs no torch

    return EmbedSettings(
        mpp=args.mpp, patch_size=args.patch_size, stride=args.stride,
        tissue_threshold=args.tissue_threshold, mpp_override=args.mpp_override,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, tokens=args.tokens, allow_non_he=args.allow_non_he,
        stain_norm=args.stain_norm, stain_reference=args.stain_reference,
    )


# ---- running a command ------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `xmag info --json | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except MemoryError:
        if os.environ.get("XMAG_DEBUG"):
            raise
        print(f"xmag {args.command}: error: out of memory; nothing was written (XMAG_MEMORY_BUDGET_MB"
              " bounds what one input may allocate)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        kept = getattr(err, "kept", None)  # a partial embedding the next run resumes from
        print(f"xmag {args.command}: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors(loaded_only=True)) or os.environ.get("XMAG_DEBUG"):
            raise
        kept = getattr(err, "kept", None)
        print(f"xmag {args.command}: error: {err}" + (f" ({kept})" if kept else ""), file=sys.stderr)
        return 2


#: Errors that are the input's fault, by module: one line, exit code 2, no traceback.
_USER_ERRORS = (
    ("_atomic", "OutputError"), ("_paths", "InputFileError"), ("embed", "EmbedCancelled"),
    ("models.files", "WeightsError"), ("slide", "SlideError"),
)


def _user_errors(loaded_only: bool = False) -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault (and ValueError). ``loaded_only``: of the modules
    imported so far, which are the only ones that can have raised (importing the others would
    cost a missing file's error half a second)."""
    found: list[type[BaseException]] = [ValueError]
    for module, name in _USER_ERRORS:
        qualified = f"{__package__}.{module}"
        loaded = sys.modules.get(qualified)
        if loaded is None and not loaded_only:
            loaded = importlib.import_module(qualified)
        if loaded is not None:
            found.append(getattr(loaded, name))
    return tuple(found)


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def _open(path: Path, mpp: float | None = None) -> Any:
    from .slide import Slide  # on demand: --help needs no torch

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
    lines += [
        f"  {lv['level']}: {lv['width']:>6} x {lv['height']:<6} downsample {lv['downsample']:<8.4g}"
        f" tile {lv['tile'][0]}x{lv['tile'][1]}  {um(lv['mpp'])}"
        for lv in summary["levels"]
    ]
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
    from .synthetic import sample_slide_path  # on demand: --help needs no torch

    print(sample_slide_path(args.out))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    if args.inspect is not None:
        from ._paths import InputFileError, file_problem  # on demand: --help needs no torch
        from .models.listing import inspect_weights  # torch: the file's tensors are read

        problem = file_problem(args.inspect, folder=True)
        if problem:
            raise InputFileError(f"{args.inspect}: {problem}")
        report = inspect_weights(args.inspect)
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        print(f"{report['path']}: {report['kind']}")
        print(f"  weights: {report['weights_file']}")
        for d in report["tensor_dicts"]:
            print(f"  tensors: {d['tensors']} in {d['where']}")
        print(f"  backbone prefixes: {', '.join(report['backbone_prefixes']) or 'none'}")
        print(f"  head prefixes: {', '.join(report['head_prefixes']) or 'none'}")
        for fit in report["fits"]:
            tiny = " (tiny configuration)" if fit["tiny"] else ""
            notes = f"; {'; '.join(fit['notes'])}" if fit["notes"] else ""
            print(f"  fits {fit['model']}{tiny}: {fit['location']}{notes}")
        if report.get("load_with"):
            print(f"  load with: {report['load_with']}")
        else:
            print(f"  fits no registered model; closest: {report.get('closest')}")
            print(f"  first keys: {', '.join(report.get('first_keys', []))}")
        return 0
    from .models.listing import zoo_table  # on demand, as above

    rows = zoo_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "role", "params", "embedding", "native_mpp", "gated", "licence", "weights", "local")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    print("  ".join(f"{c:{widths[c]}}" for c in cols[:-1]) + "  local")
    for r in rows:
        print("  ".join(f"{r[c]!s:{widths[c]}}" for c in cols[:-1]) + f"  {r['local']}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    """Check every slide first (no torch, no model: a bad path fails in a fraction of a second),
    skip the finished ones, build the model only for what is left; a slide that fails is said
    and the others go on. Exit 0, or 1 when any slide failed (2: one slide, refused)."""
    from ._paths import InputFileError, file_problem  # on demand: --help needs no torch

    failed: dict[Path, str] = {}

    def refuse(path: Path, err: BaseException, reason: str | None = None) -> None:
        """One slide's failure: the error itself when it is the only slide, else said and kept."""
        if len(args.slides) == 1:
            raise err
        kept = getattr(err, "kept", None)
        failed[path] = (reason or str(err)) + (f" ({kept})" if kept else "")
        _warn(f"xmag embed: {path}: error: {failed[path]}")

    for path in args.slides:  # a missing file is said before the (slower) imports below
        problem = file_problem(path)
        if problem:
            refuse(path, InputFileError(f"{path}: {problem}"), problem)

    from ._atomic import check_output_folder  # on demand: --help needs no torch
    from .embed import already_done, check_slide
    from .features import unique_feature_paths
    from .models.plan import planned_identity
    from .provenance import random_weights_warning

    check_output_folder(args.out)  # before the model is built or any slide read
    unique_feature_paths(args.slides, args.out, args.format)  # two slides, one output: refused now
    settings = _embed_settings(args)
    errors = _user_errors()
    todo = []
    for path in args.slides:
        if path in failed:
            continue
        try:
            check_slide(path, settings)
        except errors as err:
            refuse(path, err)
            continue
        todo.append(path)
    identity = planned_identity(args.model, args.weights) if todo and not args.overwrite else None
    if identity is not None:  # finished slides skipped before the model is built
        left = []
        for path in todo:
            finished = already_done(path, args.out, identity, settings, fmt=args.format)
            if finished is None:
                left.append(path)
            else:
                print(finished.summary())
        todo = left
    skipped = len(args.slides) - len(failed) - len(todo)
    if todo:
        from .embed import embed_slide
        from .models import inference_model

        model = inference_model(args.model, args.weights, device=settings.device,
                                precision=settings.precision)
        if model.weights.random:
            _warn(random_weights_warning())
        for path in todo:
            try:
                result = embed_slide(path, model, args.out, settings, fmt=args.format,
                                     overwrite=args.overwrite, progress=not args.no_progress)
            except errors as err:
                refuse(path, err)
                continue
            print(result.summary())
            skipped += result.skipped
    if len(args.slides) > 1:
        embedded = len(args.slides) - len(failed) - skipped
        print(f"{embedded} embedded, {skipped} already done, {len(failed)} failed"
              + "".join(f"\n  failed: {path}: {reason}" for path, reason in failed.items()))
    return 1 if failed else 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch  # on demand: --help needs no torch
    from .models.plan import declared_random
    from .provenance import random_weights_warning

    settings = _embed_settings(args)
    if declared_random(args.model, args.weights):
        _warn(random_weights_warning())
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
    from .compare import check_comparison_folder, compare_slide, parse_roi  # on demand: --help needs no torch
    from .models import create_model
    from .provenance import random_weights_warning

    roi = parse_roi(args.roi)  # a malformed ROI fails before any model is built
    check_comparison_folder(args.out, args.overwrite)  # so does an output that is not ours
    with _open(args.slide, args.mpp_override) as slide:  # and a slide that cannot be compared
        slide.require_mpp("its 5x and 20x fields of view cannot be cut")
        slide.check_readable()
    student = create_model(args.student, weights=args.student_weights)
    teacher = create_model(args.teacher, weights=args.teacher_weights)
    for side, model in (("student", student), ("teacher", teacher)):
        if model.weights.random:
            _warn(random_weights_warning("the comparison's numbers", side))
    result = compare_slide(
        args.slide, student, teacher, args.out, roi, clusters=args.clusters, mapping=args.mapping,
        tissue_threshold=args.tissue_threshold, mpp_override=args.mpp_override,
        batch_size=args.batch_size or 32, workers=args.workers, device=args.device,
        precision=args.precision, stain_norm=args.stain_norm, stain_reference=args.stain_reference,
        progress=not args.no_progress, overwrite=args.overwrite,
    )
    print(result.summary())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .mil import ABMILSettings, run_eval  # on demand: --help needs no torch

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
    from .mil import FinetuneSettings, run_finetune  # on demand: --help needs no torch
    from .provenance import random_weights_warning

    settings = FinetuneSettings(
        blocks=args.blocks, distill_weight=args.distill_weight, epochs=args.epochs,
        max_patches=args.max_patches, lr=args.lr, backbone_lr=args.backbone_lr,
        checkpointing=args.checkpointing, tissue_threshold=args.tissue_threshold,
        mpp_override=args.mpp_override, batch_size=args.batch_size or 32, workers=args.workers,
        device=args.device, precision=args.precision,
    )
    report = run_finetune(
        args.csv, args.out, slides_dir=args.slides, student=args.student,
        student_weights=args.student_weights, teacher=args.teacher, teacher_weights=args.teacher_weights,
        teacher_cache=args.teacher_cache, folds=args.folds, seed=args.seed, settings=settings,
        overwrite=args.overwrite, log=print,
    )
    for side in ("student", "teacher"):
        if report[side] and report[side]["weights_random"]:
            _warn(random_weights_warning("the fine-tuning results", side))
    print(f"{report['slides']} slides, {args.folds} folds in {report['seconds']:.1f} s -> {args.out}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import TrainConfig, train  # on demand: --help needs no torch

    names = (
        "teacher", "teacher_weights", "student", "student_weights", "epochs", "steps", "batch_size",
        "effective_batch", "batch_scaling", "lr", "weight_decay", "schedule", "warmup_steps", "ema_decay",
        "clip_grad", "seed", "stride", "five_x_source", "flips", "jitter", "jitter_p", "stain_augment",
        "stain_norm", "stain_reference", "cache", "cache_in_memory", "holdout", "eval_every", "device",
        "precision", "num_workers", "checkpoint_every", "log_every", "progress",
    )
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.recipe is not None:  # the recipe's settings, under what was given
        from .distill.recipes import recipe_options

        if args.config is not None:
            raise ValueError("give --recipe or --config, not both: a config holds every setting already")

        options = {**recipe_options(args.recipe), **options}
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
    from .models.plan import declared_random
    from .provenance import random_weights_warning

    for side in ("teacher", "student"):
        if declared_random(getattr(config, side), getattr(config, f"{side}_weights")):
            _warn(random_weights_warning("the distilled student and everything embedded with it", side))
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

    from ._atomic import check_target  # on demand: --help needs no torch
    from .compare import cosine_map
    from .formats.attention import attention_values
    from .maps import GEOJSON_KIND, MAP_STORE_KIND, make_maps, save_maps
    from .provenance import random_weights_warning

    start = time.perf_counter()
    _check_not_an_input(args.out, args.features, args.probe, args.comparison, args.attention)
    kind = GEOJSON_KIND if str(args.out).lower().endswith(".geojson") else MAP_STORE_KIND
    check_target(args.out, kind, args.overwrite)  # before any map is computed
    attention = attention_values(args.attention, args.attention_values) if args.attention else None
    if args.kind == "cosine":
        if args.comparison is None:
            raise ValueError("a cosine map needs a comparison folder: --comparison DIR (from xmag compare)")
        maps = [cosine_map(args.comparison, args.features)]
    else:
        maps = make_maps(args.features, args.kind, clusters=args.clusters, seed=args.seed, probe=args.probe,
                         attention=attention, slide_mpp=args.slide_mpp, trust_pickle=args.trust_pickle)
    out = save_maps(args.out, maps, overwrite=args.overwrite)
    if any(m.metadata.get("weights_random") for m in maps):
        _warn(random_weights_warning("the features, and so the map,"))
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
            target.samefile(source) or source.is_relative_to(target)
        ):
            raise ValueError(f"{out}: is the input {given}; write the output elsewhere")


def _cmd_search(args: argparse.Namespace) -> int:
    from ._atomic import check_target  # on demand: --help needs no torch
    from .provenance import random_weights_warning
    from .search import (
        HITS_CSV_KIND,
        QUERY_KIND,
        Query,
        default_csv_name,
        features_files,
        query_from_region,
        search_folder,
        slide_features,
        write_hits_csv,
    )

    features_files(args.features_dir)  # a missing folder, or one without features, first
    point = (args.slide, args.x, args.y)
    if args.query is not None:
        if any(v is not None for v in point) or args.size is not None:
            raise ValueError("give a QUERY.json or --slide, --x and --y, not both")
        query = Query.load(args.query)
    elif None in point:
        raise ValueError("give a QUERY.json, or --slide S --x X --y Y (level-0 px) to make the query")
    else:
        source = slide_features(args.slide, args.features_dir)
        query = query_from_region(source, args.x, args.y, size_um=args.size, mode=args.mode)
    out = args.out or Path(default_csv_name(query))
    check_target(out, HITS_CSV_KIND, args.overwrite)  # before the folder is read
    if args.save_query is not None:
        check_target(args.save_query, QUERY_KIND, args.overwrite)
    result = search_folder(args.features_dir, query, args.top, cache_dir=args.cache, index=args.index)
    if query.model.get("weights_random"):
        _warn(random_weights_warning("the features, and so the similarities,"))
    print(result.table())
    write_hits_csv(out, result.hits, overwrite=args.overwrite)
    if args.save_query is not None:
        query.save(args.save_query, overwrite=args.overwrite)
        print(f"query ({query.mode}, {len(query.vectors)} vector(s)) -> {args.save_query}")
    print(f"{result.summary()} -> {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_out_dir, run_demo  # on demand: --help needs no torch
    from .provenance import RANDOM_WEIGHTS_TAG, random_weights_warning

    if args.napari:
        _check_napari()  # before the demo runs, not after
    out = args.out or default_out_dir()
    print(f"napari-xmag demo -> {out}", flush=True)
    result = run_demo(out, with_teacher=args.with_teacher, clusters=args.clusters,
                      device=args.device, progress=not args.no_progress)
    if result.weights_random:
        _warn(random_weights_warning(f"no real xmag weights were found (offline?), so the demo's maps"
                                     f" (labelled {RANDOM_WEIGHTS_TAG})"))
    print(result.summary())
    with _open(result.slide) as slide:
        print(f"\nthe sample slide:\n{format_info(slide.summary())}")
    if args.napari:
        import napari  # here: only `xmag demo --napari` needs a viewer

        from ._demo import demo_viewer

        demo_viewer(result)
        napari.run()
    return 0


def _check_napari() -> None:
    """Napari and a Qt binding must be importable: one line naming the install, not a traceback."""
    from importlib.util import find_spec

    if find_spec("napari") is None or not any(find_spec(b) for b in ("PyQt5", "PyQt6", "PySide2", "PySide6")):
        raise ValueError("--napari needs napari with a Qt binding: pip install 'napari-xmag[all]'"
                         " (or napari[pyqt5]), or run without --napari")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
