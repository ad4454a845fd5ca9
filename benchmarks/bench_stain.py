"""Stain normalisation: what it costs per patch, and what it does to a synthetic stain shift.

On CMU-1-Small-Region and a copy of it re-stained synthetically (tests/stain_shift.py: another
lab's H&E vectors, 30% more haematoxylin, 20% less eosin), measured in one run:

- N1  the fit, once per slide (thumbnail tissue), and the cost per 224 px patch, Macenko and Reinhard
- N2  mean |RGB difference| of the same 5x patch, shifted vs original, raw and normalised
- N3  cosine of the features of the shifted slide to the original's, without and with normalisation,
      ViT-B/14 with random weights (layer scale 1): the mechanism, not what trained weights gain

Usage::

    python benchmarks/bench_stain.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _slides import CMU1_SMALL, read_cmu1  # noqa: E402

from stain_shift import shift_stains, write_slide  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from napari_xmag.embed import EmbedSettings, embed_slide
    from napari_xmag.features import read_features
    from napari_xmag.models import create_model
    from napari_xmag.slide import Slide
    from napari_xmag.stain import fit_stain_normalizer

    rows = []
    rgb = read_cmu1(CMU1_SMALL)
    with tempfile.TemporaryDirectory() as tmp:
        original = write_slide(rgb, Path(tmp) / "original.tif")
        shifted = write_slide(shift_stains(rgb), Path(tmp) / "shifted.tif")
        with Slide(original) as a, Slide(shifted) as b:
            pa = a.read_region(898, 898, 224, mpp=2.0).image[None]
            pb = b.read_region(898, 898, 224, mpp=2.0).image[None]
            batch = np.repeat(pa, 32, axis=0)
            for method in ("macenko", "reinhard"):
                t = time.perf_counter()
                na = fit_stain_normalizer(a, method)
                fit = time.perf_counter() - t
                nb = fit_stain_normalizer(b, method)
                t = time.perf_counter()
                na(batch)
                per = (time.perf_counter() - t) / len(batch)
                diff = np.abs(na(pa).astype(float) - nb(pb)).mean()
                raw = np.abs(pa.astype(float) - pb).mean()
                print(f"N1 {method}: fit {1000 * fit:.0f} ms per slide, {1000 * per:.1f} ms per 224 px patch;"
                      f" N2 |RGB difference| raw {raw:.1f} -> {diff:.1f}", flush=True)
                rows.append({"metric": f"N1 {method} ms per patch", "value": 1000 * per, "goal": "-",
                             "pass": None})
                rows.append({"metric": f"N2 {method} RGB diff raw -> normalised",
                             "value": f"{raw:.1f} -> {diff:.1f}", "goal": "smaller",
                             "pass": bool(diff < raw)})
        model = create_model("xmag", weights="random", overrides={"init_values": 1.0})
        feats = {}
        for method in ("none", "macenko", "reinhard"):
            for name, slide in (("original", original), ("shifted", shifted)):
                settings = EmbedSettings(stain_norm=method, precision="fp32")
                out = embed_slide(slide, model, Path(tmp) / method / name, settings, progress=False).output
                feats[method, name] = read_features(out).features
        for method in ("none", "macenko", "reinhard"):
            a, b = feats[method, "original"], feats[method, "shifted"]
            cos = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())
            print(f"N3 cosine shifted vs original, {method}: {cos:.5f}", flush=True)
            rows.append({"metric": f"N3 cosine shifted vs original ({method})", "value": cos, "goal": "-",
                         "pass": None})
    if args.json:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
