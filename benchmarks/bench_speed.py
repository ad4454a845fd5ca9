"""Speed by default: the default `xmag embed` against the fastest bare forward, and how fast errors come.

Measured in one run on the 40000 x 30000 slide built from CMU-1 (or ``--slide``):

- S1  bare ViT-B/14 forward, batch 8, at fp32, bf16 and int8 (patches/s); the fastest is the bar
- S2  `xmag embed SLIDE --out DIR` with no precision flag, whole slide, fresh process: wall,
      patches/s and the ratio to S1's fastest            (goal >= 0.80; wall <= 30 s)
- S3  what `--precision auto` picked here, and the probe that confirmed it
- S4  `xmag embed /no/such.svs`: seconds to the error     (goal <= 1.5 s)
- S5  `xmag embed` with the hub unreachable and nothing cached: seconds to the message (<= 3 s)
- S6  rerun of the finished slide: seconds                 (goal <= 1.5 s)
- S7  startup: `xmag --help` and `xmag info SLIDE` (no torch imported), and time to the first
      patch of S2's run

The model's weights are a fixed random draw saved as a weights file (DINOv2's layer scale set to
1, so that every block computes): a file, like a user's downloaded weights, so that ``auto``
treats it as trained weights (random weights run ``auto`` at fp32: see models/precision.py).

Usage::

    python benchmarks/bench_speed.py [--slide PATH] [--keep DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _slides import CMU1_SMALL, benchmark_slide

CLI = [sys.executable, "-m", "napari_xmag.cli"]
BATCH = 8


def bare_forward(n_batches: int = 6) -> dict[str, float]:
    """Patches/s of the bare forward (no reading, no preprocessing) at each CPU precision."""
    import torch

    from napari_xmag.models import create_model
    from napari_xmag.models.cpu_precision import convert_for_cpu

    model = create_model("xmag", weights="random", overrides={"init_values": 1.0}).eval()
    x = torch.randn(BATCH, 3, 224, 224)
    rates = {}
    for precision in ("fp32", "bf16", "int8"):
        m = convert_for_cpu(model, precision)
        inp = x.bfloat16() if precision == "bf16" else x
        with torch.inference_mode():
            m.embed(inp)  # warm-up: oneDNN packs its weights
            start = time.perf_counter()
            for _ in range(n_batches):
                m.embed(inp)
        rates[precision] = n_batches * BATCH / (time.perf_counter() - start)
    return rates


def weights_file(folder: Path) -> Path:
    """The benchmark's weights: the random draw above, saved as a plain safetensors file."""
    from safetensors.torch import save_file

    from napari_xmag.models import create_model

    model = create_model("xmag", weights="random", overrides={"init_values": 1.0})
    path = folder / "xmag-bench.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(path))
    return path


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start, proc


def first_patch_seconds(slide: Path, weights: Path, out: Path) -> float:
    """Process start to the first embedded batch, default settings (a fresh process)."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from napari_xmag.embed import embed_slide, EmbedSettings\n"
        "from napari_xmag.models import inference_model\n"
        "class First(Exception): pass\n"
        "def seen(done, total):\n"
        "    if done: raise First\n"
        f"m = inference_model('xmag', {str(weights)!r})\n"
        f"try: embed_slide({str(slide)!r}, m, {str(out)!r}, EmbedSettings(), progress=seen)\n"
        "except First: print(time.perf_counter() - t0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(proc.stdout.strip().splitlines()[-1])


def measure(slide: Path, work: Path) -> list[dict]:
    rows = []
    rates = bare_forward()
    fastest = max(rates, key=rates.get)  # type: ignore[arg-type]
    print("S1 bare ViT-B/14 forward, batch 8: " + ", ".join(f"{p} {r:.1f}" for p, r in rates.items())
          + f" patches/s; fastest {fastest}", flush=True)

    weights = weights_file(work)
    out = work / "features"
    wall, proc = timed([*CLI, "embed", str(slide), "--model", "xmag", "--weights", str(weights),
                        "--out", str(out), "--no-progress"])
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    from napari_xmag.features import read_header

    header = read_header(next(out.glob("*.h5")))
    patches, used = len(header.coords), header.attrs["precision"]
    rate = patches / wall
    print(f"S2 xmag embed, default flags: {patches} patches in {wall:.1f} s wall ({rate:.1f} patches/s,"
          f" precision auto -> {used}); {rate / rates[fastest]:.2f} of the fastest bare forward", flush=True)
    rows += [_row("S2 default embed / fastest bare forward", rate / rates[fastest], ">=", 0.80),
             _row(f"S2 default embed wall s ({patches} patches)", wall, "<=", 30.0)]

    from napari_xmag._paths import user_cache_dir

    cached = json.loads((user_cache_dir() / "cpu-precision.json").read_text())
    print(f"S3 precision auto on this CPU: {json.dumps(cached)}", flush=True)

    wall, proc = timed([*CLI, "embed", str(work / "no-such.svs"), "--out", str(work / "x")])
    print(f"S4 missing slide -> error in {wall:.2f} s (exit {proc.returncode})", flush=True)
    rows.append(_row("S4 bad path -> error s", wall, "<=", 1.5))

    env = {"HF_HOME": str(work / "empty-hf"), "HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://10.255.255.1"}
    wall, proc = timed([*CLI, "embed", str(CMU1_SMALL), "--out", str(work / "y")], env)
    said = proc.stderr.strip().splitlines()[-1][:100] if proc.stderr.strip() else ""
    print(f"S5 hub unreachable, nothing cached -> message in {wall:.2f} s: {said}...", flush=True)
    rows.append(_row("S5 offline hub -> error s", wall, "<=", 3.0))

    wall, proc = timed([*CLI, "embed", str(slide), "--model", "xmag", "--weights", str(weights),
                        "--out", str(out), "--no-progress"])
    print(f"S6 finished slide rerun: {wall:.2f} s ({proc.stdout.strip()[:80]})", flush=True)
    rows.append(_row("S6 finished-slide rerun s", wall, "<=", 1.5))

    help_s, _ = timed([*CLI, "--help"])
    info_s, _ = timed([*CLI, "info", str(slide)])
    probe = subprocess.run([sys.executable, "-c", "import sys; from napari_xmag.cli import main; "
                            f"main(['info', {str(slide)!r}]); print('torch' in sys.modules)"],
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    first = first_patch_seconds(slide, weights, work / "first")
    print(f"S7 startup: --help {help_s:.2f} s, info {info_s:.2f} s (torch imported: {probe});"
          f" time to the first patch {first:.1f} s", flush=True)
    rows += [_row("S7 xmag --help s", help_s, "<=", 0.5), _row("S7 time to first patch s", first, "<=", 15.0)]
    return rows


def _row(metric: str, value: float, op: str, goal: float) -> dict:
    ok = {"<=": value <= goal, ">=": value >= goal}[op]
    return {"metric": metric, "value": value, "goal": f"{op} {goal:g}", "pass": bool(ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="reuse a slide built earlier")
    parser.add_argument("--keep", type=Path, help="build the slide into DIR and keep it")
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    args = parser.parse_args()
    with (tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp,
          benchmark_slide(args.slide, args.keep) as slide):
        rows = measure(slide, Path(tmp))
    print(f"\n{'metric':44} {'ours':>10} {'goal':>10}  result")
    for r in rows:
        print(f"{r['metric']:44} {r['value']:10.2f} {r['goal']:>10}  {'PASS' if r['pass'] else 'MISS'}")
    if args.json:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
