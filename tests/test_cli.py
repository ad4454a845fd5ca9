"""``xmag`` commands: output values and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cases import ALL_CASES, BOXES, CMU1, Case
from napari_xmag.cli import main


def test_info_text(capsys) -> None:
    assert main(["info", str(CMU1.path)]) == 0
    out = capsys.readouterr().out
    assert "vendor:           aperio" in out
    assert "2220 x 2967 px" in out
    assert "0.499 µm/px" in out
    assert "objective power:  20.0" in out
    assert "20x (0.5 µm/px):  level 0, reduced by 1.002" in out
    assert "5x (2.0 µm/px):  level 0, reduced by 4.008" in out


def test_info_json(capsys) -> None:
    assert main(["info", str(CMU1.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "aperio"
    assert info["levels"] == [
        {"level": 0, "width": 2220, "height": 2967, "downsample": 1.0, "tile": [240, 240], "mpp": 0.499}
    ]
    assert info["objective_power"] == 20.0
    assert info["magnifications"]["5x"] == {"level": 0, "factor": pytest.approx(2.0 / 0.499), "mpp": 2.0}


def test_info_multilevel(pyramid_path, capsys) -> None:
    assert main(["info", str(pyramid_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [lv["downsample"] for lv in info["levels"]] == [1.0, 4.0, 16.0]
    assert info["magnifications"] == {
        "20x": {"level": 0, "factor": 1.0, "mpp": 0.5},
        "5x": {"level": 1, "factor": 1.0, "mpp": 2.0},
    }


def test_info_without_mpp(capsys) -> None:
    assert main(["info", str(BOXES.path)]) == 0
    captured = capsys.readouterr()
    assert "mpp:              x unknown" in captured.out
    assert "use --mpp-override" in captured.out
    assert "warning:" in captured.err and "boxes.tiff" in captured.err
    assert main(["info", str(BOXES.path), "--mpp-override", "0.25"]) == 0
    assert "5x (2.0 µm/px):  level 2, reduced by 1.992" in capsys.readouterr().out


@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_info_on_every_test_slide(case: Case, capsys) -> None:
    code = main(["info", str(case.path), "--json"])
    captured = capsys.readouterr()
    if case.error:  # exit 2 and one line naming the file and the cause, nothing on stdout
        assert code == 2 and captured.out == ""
        [line] = captured.err.strip().splitlines()
        assert line.startswith("xmag info: error: ") and case.file in line and case.error in line
        return
    assert code == 0
    info = json.loads(captured.out)
    assert info["vendor"] == case.vendor
    assert [(lv["width"], lv["height"]) for lv in info["levels"]] == list(case.level_dimensions)
    assert info["mpp_x"] == case.mpp and info["objective_power"] == case.objective_power
    assert sorted(info["associated_images"]) == sorted(case.associated)
    assert ("warning:" in captured.err) == (case.mpp is None)


def test_console_script_runs(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "napari_xmag.cli", "info", str(tmp_path / "missing.svs")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"xmag info: error: {tmp_path / 'missing.svs'}: no such file"


def test_cli_reference_is_current() -> None:
    """docs/cli-reference.md is generated from the parser; regenerate it when this fails."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_cli_reference.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
