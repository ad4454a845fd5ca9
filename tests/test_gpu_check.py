"""benchmarks/gpu_check.py falls back to the CPU cleanly when there is no GPU: every line of the
script runs (tiny models, CMU-1-Small-Region) and its results are complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_falls_back_to_the_cpu(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script runs for real (benchmarks, not tests)")
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU here: the CPU fallback" in proc.stdout and "P1:" in proc.stdout
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and {r["model"] for r in results["runs"]} == {"xmag", "uni2-h"}
    assert all(r["patches"] > 0 and r["wall_s"] > 0 for r in results["runs"])
    assert set(results["cosine"]) == {"xmag bf16", "uni2-h bf16"}
    assert all(0.9 < c <= 1.0 + 1e-6 for c in results["cosine"].values()), results["cosine"]
    assert results["p1"] > 0
