"""Query by example: how long a folder search takes, exact and with the faiss index.

On 100 synthetic features files x 1000 patches x 768 dimensions (embeddings around 200 tissue
"types", as real ones cluster), written with ``write_features`` in a temporary folder, measured
in one run:

- S1  exact search: the cold first query (every file read once into the .npy cache) and a warm
      one (the cache memory-mapped), median of 5 queries
- S2  the faiss IVF index: the cold first query (the index built and kept) and a warm one
- S3  warm exact / warm index, and how many of the exact top 10 the index finds (recall@10)
- S4  exact search's cost per 1e9 values (patches x dims), warm: where ``INDEX_MIN_VALUES`` sits

Usage::

    python benchmarks/bench_search.py [--slides 100] [--patches 1000] [--dim 768] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_folder(folder: Path, slides: int, patches: int, dim: int) -> None:
    from napari_xmag.features import FeatureSet, write_features

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, dim)).astype(np.float32)
    side = int(np.ceil(np.sqrt(patches)))
    xy = np.stack(np.meshgrid(np.arange(side) * 896, np.arange(side) * 896), -1).reshape(-1, 2)[:patches]
    attrs = {"model": "xmag", "weights_source": "bench", "weights_random": True, "slide_mpp": 0.5,
             "mpp": 2.0, "stride": 224}
    coords_attrs = {"patch_size": 224, "patch_size_level0": 896, "stride": 224, "mpp": 2.0}
    for i in range(slides):
        feats = centres[rng.integers(0, len(centres), patches)] + 0.7 * rng.normal(size=(patches, dim))
        write_features(folder / f"slide-{i:03d}.h5",
                       FeatureSet(xy, feats.astype(np.float32), {**attrs, "slide_path": f"slide-{i:03d}.svs"},
                                  {**coords_attrs, "name": f"slide-{i:03d}"}))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=100)
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from napari_xmag import search

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "features", Path(tmp) / "cache"
        folder.mkdir()
        t, _ = timed(lambda: write_folder(folder, args.slides, args.patches, args.dim))
        values = args.slides * args.patches * args.dim
        print(f"{args.slides} files x {args.patches} patches x {args.dim} written in {t:.1f} s", flush=True)
        queries = [search.query_from_region(folder / f"slide-{i:03d}.h5", 896 * (i % 5) + 10, 10)
                   for i in range(6)]

        def run(q, index):
            return search.search_folder(folder, q, top=10, cache_dir=cache, index=index)

        cold_exact, first = timed(lambda: run(queries[0], "exact"))
        warm_exact = statistics.median(timed(lambda q=q: run(q, "exact"))[0] for q in queries[1:])
        print(f"S1 exact: cold {cold_exact:.2f} s (cache built), warm {1000 * warm_exact:.1f} ms", flush=True)
        cold_index, _ = timed(lambda: run(queries[0], "faiss"))
        warm_index = statistics.median(timed(lambda q=q: run(q, "faiss"))[0] for q in queries[1:])
        print(f"S2 faiss index: cold {cold_index:.2f} s (index built), warm {1000 * warm_index:.1f} ms",
              flush=True)
        recall = []
        for q in queries:
            exact = {(h.features, h.x, h.y) for h in run(q, "exact").hits}
            approx = {(h.features, h.x, h.y) for h in run(q, "faiss").hits}
            recall.append(len(exact & approx) / len(exact))
        print(f"S3 warm exact / warm index: {warm_exact / warm_index:.1f}x;"
              f" recall@10 {np.mean(recall):.2f}; first hit {first.hits[0].slide} {first.hits[0].score:.4f}",
              flush=True)
        per = warm_exact / values * 1e9
        print(f"S4 exact, warm: {per:.2f} s per 1e9 values; 0.25 s at {0.25 / per * 1e9:.3g} values"
              f" (INDEX_MIN_VALUES = {search.INDEX_MIN_VALUES:.3g})", flush=True)
        rows += [
            {"metric": "S1 exact cold s", "value": cold_exact, "goal": "-", "pass": None},
            {"metric": "S1 exact warm s", "value": warm_exact, "goal": "< 1", "pass": bool(warm_exact < 1)},
            {"metric": "S2 index cold s", "value": cold_index, "goal": "-", "pass": None},
            {"metric": "S2 index warm s", "value": warm_index, "goal": "< 1", "pass": bool(warm_index < 1)},
            {"metric": "S3 exact / index (warm)", "value": warm_exact / warm_index, "goal": "-",
             "pass": None},
            {"metric": "S3 index recall@10", "value": float(np.mean(recall)), "goal": ">= 0.9",
             "pass": bool(np.mean(recall) >= 0.9)},
        ]
    if args.json:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
