"""The ``xmag`` command line: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import argparse
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
        description="Cross-magnification (XMAG) whole-slide tools: slide info, sample data, demo.",
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
    embed.add_argument("--model", default="xmag", help="registry name, local path or hf-hub:ORG/NAME (default: xmag)")
    embed.add_argument("--weights", default="auto",
                       help="auto (the model's own: hub or path), random (tests/benchmarks only), or a file")
    embed.add_argument("--out", type=Path, required=True, help="output folder")
    embed.add_argument("--mpp", default="2.0", help="target µm/px, or 5x / 20x (default: 2.0 = 5x)")
    embed.add_argument("--patch-size", type=int, default=224)
    embed.add_argument("--stride", type=int, default=None, help="default: the patch size (no overlap)")
    embed.add_argument("--tissue-threshold", type=float, default=0.25,
                       help="fraction of a patch that must be tissue (default: 0.25)")
    embed.add_argument("--mpp-override", type=float, default=None, metavar="UM",
                       help="level-0 µm/px for slides that do not record it")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--workers", type=int, default=2, help="slide-reading threads")
    embed.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    embed.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    embed.add_argument("--format", default="h5", choices=["h5", "zarr"])
    embed.add_argument("--tokens", action="store_true", help="also keep patch-token grids (zarr)")
    embed.add_argument("--overwrite", action="store_true",
                       help="replace feature files made with other settings")
    embed.add_argument("--no-progress", action="store_true")
    embed.set_defaults(func=_cmd_embed)

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
    compare.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: small models
    compare.set_defaults(func=_cmd_compare)

    demo = sub.add_parser("demo", help="the offline demo: make the sample slide and show what it holds")
    demo.add_argument("--out", type=Path, default=None, help="folder (default: the user cache)")
    demo.set_defaults(func=_cmd_demo)
    return parser


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
    except KeyboardInterrupt:
        print(f"xmag {args.command}: interrupted", file=sys.stderr)
        return 130


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: one line, non-zero exit, no traceback."""
    from .embed import EmbedCancelled
    from .features import FeatureFileError

    errors: list[type[BaseException]] = [EmbedCancelled, FeatureFileError, ValueError]
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
    from .embed import EmbedSettings, embed_slide
    from .models import create_model

    settings = EmbedSettings(
        mpp=args.mpp, patch_size=args.patch_size, stride=args.stride,
        tissue_threshold=args.tissue_threshold, mpp_override=args.mpp_override,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, tokens=args.tokens,
    )
    model = create_model(args.model, weights=args.weights)
    if model.weights.random:
        print("warning: RANDOM WEIGHTS: embeddings carry no meaning (recorded in every output)",
              file=sys.stderr)
    for path in args.slides:
        result = embed_slide(path, model, args.out, settings, fmt=args.format,
                             overwrite=args.overwrite, progress=not args.no_progress)
        print(result.summary())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_slide, parse_roi
    from .models import create_model

    roi = parse_roi(args.roi)  # a malformed ROI fails before any model is built
    student = create_model(args.student, weights=args.student_weights, tiny=args.tiny)
    teacher = create_model(args.teacher, weights=args.teacher_weights, tiny=args.tiny)
    for side, model in (("student", student), ("teacher", teacher)):
        if model.weights.random:
            print(f"warning: RANDOM WEIGHTS ({side}): the comparison carries no meaning", file=sys.stderr)
    result = compare_slide(
        args.slide, student, teacher, args.out, roi, clusters=args.clusters, mapping=args.mapping,
        tissue_threshold=args.tissue_threshold, mpp_override=args.mpp_override,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, progress=not args.no_progress,
    )
    print(result.summary())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .sample import sample_slide_path

    path = sample_slide_path(args.out)
    print(f"sample slide: {path}\n")
    with _open(path) as slide:
        print(format_info(slide.summary()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
