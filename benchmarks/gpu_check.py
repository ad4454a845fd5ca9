"""The GPU path, checked in one short run: the benchmark slide at 5x (xmag, ViT-B/14) and at 20x
(the UNI2-h architecture, ViT-H/14), random weights, fp16 and bf16 autocast, batch 64 and 128.

Prints, per run: whole-slide wall, WSIs/min, patches/s, peak GPU memory; per model and
precision: the cosine of the features to fp32 on the slide's first 256 patches; and P1, the
20x teacher's wall over the 5x student's on the same slide. Needs nothing but the repository
(random weights; the slide is built from tests/data/CMU-1-Small-Region.svs).

With no GPU it falls back to the CPU at once, cleanly: CMU-1-Small-Region itself, the models'
tiny configurations and batch 8, so that the script's every line runs on any machine (the CI
machine included) in well under a minute; the numbers then say nothing about a GPU.

Usage::

    python benchmarks/gpu_check.py [--slide PATH] [--keep DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _slides import CMU1_SMALL, benchmark_slide

COSINE_PATCHES = 256
RUNS = {  # model -> (µm/px, [(precision, batch), ...]); the teacher's runs are the long ones
    "xmag": (2.0, [("fp16", 64), ("fp16", 128), ("bf16", 64), ("bf16", 128)]),
    "uni2-h": (0.5, [("fp16", 128), ("bf16", 64)]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="reuse a slide built earlier")
    parser.add_argument("--keep", type=Path, help="build the slide into DIR and keep it")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}",
              flush=True)
    else:
        print("no GPU here: the CPU fallback (CMU-1-Small-Region, tiny models, batch 8); the numbers"
              " say nothing about a GPU", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if gpu:
            with benchmark_slide(args.slide, args.keep) as slide:
                results = check(slide, Path(tmp), device, tiny=False)
        else:
            results = check(CMU1_SMALL, Path(tmp), device, tiny=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def check(slide: Path, work: Path, device: str, *, tiny: bool) -> dict:
    import numpy as np
    import torch

    from napari_xmag.embed import EmbedSettings, embed_patches, embed_slide, iter_patch_batches
    from napari_xmag.features import read_features
    from napari_xmag.models import create_model

    results: dict = {"device": device, "slide": str(slide), "runs": [], "cosine": {}}
    walls: dict[str, float] = {}
    for name, (mpp, runs) in RUNS.items():
        model = create_model(name, weights="random", tiny=tiny, device=device)
        if device == "cpu":  # autocast fp16 is GPU only: the fallback runs bf16 and fp32
            runs = [("bf16", 8)]
        reference = None
        for precision, batch in runs:
            settings = EmbedSettings(mpp=mpp, batch_size=batch, precision=precision, device=device,
                                     workers=8 if device == "cuda" else 2)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            out = embed_slide(slide, model, work / f"{name}-{precision}-{batch}", settings, progress=False)
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            walls[name] = min(walls.get(name, wall), wall)
            run = {"model": name, "precision": precision, "batch": batch, "patches": out.patches,
                   "wall_s": round(wall, 2), "wsi_per_min": round(60 / wall, 2),
                   "patches_per_s": round(out.patches / wall, 1), "peak_gpu_gib": round(peak, 2)}
            results["runs"].append(run)
            print(f"{name:7} {precision} batch {batch:3}: {out.patches} patches in {wall:.1f} s,"
                  f" {60 / wall:.1f} WSIs/min, {out.patches / wall:.0f} patches/s, peak GPU {peak:.1f} GiB",
                  flush=True)
            data = read_features(out.output)
            coords = data.coords[:COSINE_PATCHES]
            if reference is None:
                batches = iter_patch_batches(slide, coords, mpp, 224, batch_size=32, workers=2)
                reference, _ = embed_patches(model, batches, len(coords), device=device, precision="fp32",
                                             progress=False)
            f = data.features[: len(coords)]
            cos = (f * reference).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(reference, axis=1))
            results["cosine"][f"{name} {precision}"] = round(float(cos.min()), 5)
            print(f"{name:7} {precision}: cosine to fp32 on {len(coords)} patches: min {cos.min():.5f},"
                  f" mean {cos.mean():.5f}", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    results["p1"] = round(walls["uni2-h"] / walls["xmag"], 1)
    print(f"P1: UNI2-h at 20x / xmag at 5x, whole slide, best runs: {results['p1']}x"
          f" ({walls['uni2-h']:.1f} s / {walls['xmag']:.1f} s)", flush=True)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
