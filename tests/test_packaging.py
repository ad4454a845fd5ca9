"""The installed package carries the root napari.yaml, editable or not, and it validates."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_installed_manifest_is_the_root_manifest() -> None:
    import npe2

    installed = npe2.PluginManifest.from_distribution("napari-xmag")
    assert installed == npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert installed.name == "napari-xmag"
    installed.validate_imports()  # every python_name resolves


@pytest.mark.slow
def test_wheel_install_uses_the_same_manifest(tmp_path) -> None:
    """``pip install .`` (not editable) ships napari.yaml as a file with the root's content."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
    )
    [wheel] = wheels.glob("napari_xmag-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("napari_xmag/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        [entry_points] = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "napari-xmag = napari_xmag:napari.yaml" in zf.read(entry_points).decode()
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    probe = (
        "import npe2, napari_xmag, pathlib;"
        "m = npe2.PluginManifest.from_distribution('napari-xmag');"
        "m.validate_imports();"
        f"assert pathlib.Path(napari_xmag.__file__).is_relative_to({str(target)!r});"
        "print(m.name, len(m.contributions.readers))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["napari-xmag", "2"]  # slides, and our own map files


def napari_menu_paths() -> set[str]:
    """Every menu path napari builds from our manifest, as a user reads it ("File > ... > ...")."""
    import npe2
    from napari._qt._qplugins._qnpe2 import _build_samples_submenu_actions, _build_widgets_submenu_actions

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-xmag")
    tops = {"napari/file/samples": "File > Open Sample", "napari/plugins": "Plugins"}
    paths = set()
    for build in (_build_samples_submenu_actions, _build_widgets_submenu_actions):
        submenus, actions = build(manifest)
        names = dict(tops)
        for parent, item in submenus:
            names[item.submenu] = f"{names[parent]} > {item.title}"
            paths.add(names[item.submenu])
        for action in actions:
            for rule in action.menus or []:
                paths.add(f"{names[rule.id]} > {action.title}")
    return paths


def test_menu_paths_in_the_docs_are_the_ones_napari_shows() -> None:
    """Every *File > ...* or *Plugins > ...* the README and docs name is a path napari shows."""
    paths = napari_menu_paths()
    assert "Plugins > XMAG cross-magnification pathology > XMAG inference" in paths
    named = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = " ".join(page.read_text().split())  # a path may wrap across lines
        for match in re.finditer(r"\*((?:File > Open Sample|Plugins)(?: > [^*>]+)+)\*", text):
            named[match.group(1).strip()] = page.name
    assert named, "the docs name no menu path"
    wrong = {path: page for path, page in named.items() if path not in paths}
    assert not wrong, f"not in napari's menus: {wrong}; napari shows {sorted(paths)}"
