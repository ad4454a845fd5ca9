"""The code's own checks, in the test command: ruff over everything, mypy over the core library,
and the import rule that keeps torch out of the light paths (a slide or a map opened in napari)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cases import ROOT

# Modules that opening a slide, a map or a features file goes through: none may import torch.
LIGHT = ("slide", "tiling", "features", "maps", "formats.attention", "synthetic", "magnification",
         "_reader", "_writer", "_sample_data", "compare.result", "provenance", "slide_list")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff() -> None:
    proc = run("ruff", "check", "src", "tests", "benchmarks", "scripts")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_on_the_core_library() -> None:
    proc = run("mypy")  # files and strictness: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Success: no issues found"), proc.stdout


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_do_not_import_torch(module: str) -> None:
    code = (f"import sys, napari_xmag.{module};"
            " print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120)
    assert proc.stdout.strip() == "[]", f"napari_xmag.{module} imports {proc.stdout.strip()}"
