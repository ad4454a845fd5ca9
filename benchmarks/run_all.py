"""Run every benchmark on one slide and print all their ratios in one table.

Usage::

    xvfb-run -a python benchmarks/run_all.py [--slide PATH] [--keep DIR] [--quick]

Builds the 40000 x 30000 pyramid from real tissue once (or reuses ``--slide``) and runs, one
after another so that none slows another down: bench_reader.py, bench_embed.py, bench_speed.py,
bench_stain.py, bench_search.py, bench_live.py, bench_wholeslide.py and bench_distill.py. Each
prints its own detail; the table at the end
collects their summary rows. ``--quick`` skips the fp32 whole-slide run (~5 min) and shortens
the distillation run. The whole run takes about 20 minutes on 2 cores (12 with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _slides import benchmark_slide  # noqa: E402


def run(script: str, args: list[str], rows_file: Path) -> list[dict]:
    print(f"\n===== {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / script), *args, "--json", str(rows_file)])
    print(f"===== {script}: {time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
    if proc.returncode != 0 or not rows_file.exists():
        return [{"metric": f"{script} failed (exit {proc.returncode})", "value": "-", "goal": "-",
                 "pass": False}]
    return json.loads(rows_file.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="reuse a slide built earlier")
    parser.add_argument("--keep", type=Path, help="build the slide into DIR and keep it")
    parser.add_argument("--quick", action="store_true",
                        help="skip the fp32 whole-slide run, shorter distillation")
    args = parser.parse_args()
    with (tempfile.TemporaryDirectory(prefix="bench-all-") as rows_dir,
          benchmark_slide(args.slide, args.keep) as slide):
        tmp = Path(rows_dir)
        rows = []
        rows += run("bench_reader.py", ["--slide", str(slide)], tmp / "reader.json")
        rows += run("bench_embed.py", [], tmp / "embed.json")
        rows += run("bench_speed.py", ["--slide", str(slide)], tmp / "speed.json")
        rows += run("bench_stain.py", [], tmp / "stain.json")
        rows += run("bench_search.py", [], tmp / "search.json")
        rows += run("bench_live.py", [], tmp / "live.json")
        rows += run("bench_wholeslide.py", ["--slide", str(slide), *(["--skip-fp32"] if args.quick else [])],
                    tmp / "wholeslide.json")
        rows += run("bench_distill.py", ["--steps", "200"] if args.quick else [], tmp / "distill.json")

    print(f"\n{'metric':58} {'ours':>22} {'goal':>20}  result")
    for row in rows:
        value = row["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        verdict = {True: "PASS", False: "MISS", None: "-"}[row["pass"]]
        print(f"{row['metric']:58} {shown:>22} {row['goal']:>20}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
