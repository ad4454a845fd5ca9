"""Live maps: how soon the first one is on the canvas, and what they cost the run.

On the sample slide (``xmag sample``), with the inference widget's default model (``xmag``; its
real weights cannot be downloaded here, so random weights, which run at fp32), measured in one
run from the moment the worker starts (the model built in it, as the widget does):

- L1  time to the first live update (the patch grid, before any forward)
- L2  time to the first update with embedded patches (the done mask fills in); also with
      ``--precision bf16``, what real weights run at on a CPU with bf16 units (random weights run
      at fp32, and the first batch of 8 ViT-B patches then takes most of the time)
- L3  time to the live PCA (fitted on the first patches)
- L4  wall time of the whole run with live maps / without them (updates every 250 ms), A/B in turn

Usage::

    python benchmarks/bench_live.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.live import embed_slide_live
    from napari_xmag.models import create_model
    from napari_xmag.synthetic import sample_slide_path

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        slide = sample_slide_path(Path(tmp) / "sample")
        settings = EmbedSettings()  # the widget's defaults: 5x, 224 px, auto precision, 2 readers
        start = time.perf_counter()
        model = create_model("xmag", weights="random")
        built = time.perf_counter() - start
        first = embedded = pca = None
        updates = 0
        result = []

        def run(out):
            result.append((yield from embed_slide_live(slide, model, out, settings, progress=False)))

        for update in run(Path(tmp) / "live"):
            now = time.perf_counter() - start
            updates += 1
            first = first if first is not None else now
            if embedded is None and update.done > 0:
                embedded = now
            if pca is None and update.pca is not None:
                pca = now
        total = result[0].patches
        t = time.perf_counter()
        embedded_bf16 = None
        bf16 = replace(settings, precision="bf16")
        for update in embed_slide_live(slide, model, Path(tmp) / "bf16", bf16, progress=False):
            if update.done > 0:
                embedded_bf16 = time.perf_counter() - t + built
                break
        # the cost of live maps: plain and live runs in turn (A/B pairs), the median ratio
        ratios, walls = [], []
        for pair in range(3):
            t = time.perf_counter()
            embed_slide(slide, model, Path(tmp) / f"plain{pair}", settings, progress=False)
            plain_wall = time.perf_counter() - t
            t = time.perf_counter()
            for _ in run(Path(tmp) / f"live{pair}"):
                pass
            live_wall = time.perf_counter() - t
            ratios.append(live_wall / plain_wall)
            walls.append((live_wall, plain_wall))
        ratio = sorted(ratios)[len(ratios) // 2]
    print(f"sample slide: {total} patches; model built in {built:.2f} s; {updates} live updates")
    print(f"L1 first live update (the patch grid): {first:.2f} s after the start")
    print(f"L2 first update with embedded patches: {embedded:.2f} s")
    print(f"L2 at bf16: {embedded_bf16:.2f} s (model build included)")
    print(f"L3 live PCA: {pca:.2f} s")
    pairs = ", ".join(f"{a:.1f}/{b:.1f} s" for a, b in walls)
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"L4 run with / without live maps: {pairs}; ratio {ratio:.2f} (pairs {each})")
    rows += [
        {"metric": "L1 first live update, s (from the start, model build included)", "value": first,
         "goal": "<= 2", "pass": first <= 2.0},
        {"metric": "L2 first embedded patches on the canvas, s", "value": embedded, "goal": "-",
         "pass": None},
        {"metric": "L2 the same at bf16, s", "value": embedded_bf16, "goal": "<= 2",
         "pass": embedded_bf16 <= 2},
        {"metric": "L3 live PCA on the canvas, s", "value": pca, "goal": "-", "pass": None},
        {"metric": "L4 wall with / without live maps", "value": ratio, "goal": "<= 1.05",
         "pass": ratio <= 1.05},
    ]
    if args.json:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
