"""Bad inputs: each ends in one clear line naming the file and the cause, with exit status 2
(``xmag embed``) or an exception napari shows as a notification (the reader), and nothing is
left in the output folder, not even a hidden temporary.

Choices these tests pin down:

* **Extensions.** OpenSlide goes by content, and so does ``xmag embed``: a real SVS renamed
  ``.tif`` (an analyst's rename) or even ``.txt`` embeds as the slide it is, its output named
  after the file's stem; a PNG or a text file named ``.svs`` is "not a slide format". The
  napari probe also asks for a slide suffix, so a ``.txt`` is left to napari's other readers.
* **Non-RGB slides.** OpenSlide opens a grayscale, 16-bit or multi-channel (fluorescence) TIFF
  as false RGBA without a word. The slide store refuses it ("not an RGB brightfield slide",
  with what the image is), so every command does; the napari probe declines it, so that
  napari's own TIFF reader opens it as it is, and forced through our reader it says why.
* **Damaged files.** An empty or truncated file says so ("the file is empty", "the file is
  truncated ... image directory past its end"); a damaged file with a slide-only suffix
  (``.svs``) is claimed by the napari probe so that napari shows that cause.
* **Too small.** A slide on which not even one patch could hold the tissue threshold is
  "smaller than one patch" (with sizes and what to change), never "no tissue".
* **Output.** Checked before any work (a read-only or permission-denied folder fails before
  the model is built); a full disk at write time is "no space left on device" naming the
  features file, and a run whose arrays cannot fit fails before the forward pass.

Corrupt ``unreadable.svs`` / ``broken.svs`` and a missing mpp on ``boxes.tiff`` through
``xmag embed`` are in ``test_embed.py``; the reader's probe on other non-slides in
``test_reader.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cases import CMU1, SLIDES
from hazards import Payload
from napari_xmag._atomic import OutputError, check_output_folder
from napari_xmag._reader import get_reader, read_slides
from napari_xmag.cli import main
from napari_xmag.embed import EmbedSettings, embed_slide
from napari_xmag.features import read_features
from napari_xmag.models import create_model, save_model
from napari_xmag.slide import MissingMppWarning, Slide, SlideError, SlideOpenError
from napari_xmag.synthetic import write_aperio_pyramid
from napari_xmag.tiling import SlideTooSmallError

pytestmark = pytest.mark.filterwarnings("ignore::napari_xmag.slide.MissingMppWarning")


# ---- the files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random XMAG student saved as a folder (what ``--model PATH`` takes)."""
    folder = save_model(create_model("xmag", weights="random", tiny=True),
                        tmp_path_factory.mktemp("model") / "tiny-xmag")
    for f in folder.iterdir():
        f.chmod(0o644)  # readable by the unprivileged subprocess below
    return folder


def _tiled_tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    import tifffile

    tifffile.imwrite(path, data, tile=(256, 256), resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER", **kwargs)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, cmu1_rgb) -> dict[str, Path]:
    """Bad (and oddly named good) inputs, by name."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    cmu1 = CMU1.path.read_bytes()
    (d / "truncated.svs").write_bytes(cmu1[: len(cmu1) // 3])
    (d / "empty.svs").write_bytes(b"")
    from PIL import Image

    Image.fromarray(cmu1_rgb[:64, :64]).save(d / "png.svs", format="PNG")
    (d / "text.svs").write_text("slide,label\nCMU-1,tumour\n", encoding="utf-8")
    gray = "minisblack"
    _tiled_tiff(d / "gray16.tif", rng.integers(0, 65535, (512, 512), dtype=np.uint16), photometric=gray)
    _tiled_tiff(d / "gray8.tif", rng.integers(0, 255, (512, 512), dtype=np.uint8), photometric=gray)
    _tiled_tiff(d / "fluo5.tif", rng.integers(0, 255, (5, 512, 512), dtype=np.uint8),
                photometric=gray, planarconfig="separate")
    _tiled_tiff(d / "rgb16.tif", rng.integers(0, 65535, (512, 512, 3), dtype=np.uint16), photometric="rgb")
    import tifffile

    # real tissue, tiled RGB, and no resolution recorded (tifffile writes 1 per "no unit")
    tifffile.imwrite(d / "nores.tif", np.ascontiguousarray(cmu1_rgb[1000:2024, 900:1924]), tile=(256, 256),
                     photometric="rgb")
    write_aperio_pyramid(d / "blank.svs", 2000, 1600,
                         lambda ds, y, x, h, w: np.full((h, w, 3), 250, np.uint8))
    shutil.copy(CMU1.path, d / "CMU-1.tif")
    shutil.copy(CMU1.path, d / "CMU-1.txt")
    return {p.name: p for p in d.iterdir()} | {
        "small.svs": SLIDES / "small.svs", "unopenable.tiff": SLIDES / "unopenable.tiff",
        "unreadable.svs": SLIDES / "unreadable.svs",
    }


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    """A ViT-S state dict (the wrong architecture) and pickles that would run code."""
    import pickle

    import timm
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    vit_s = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=2)
    state = {k: v.contiguous() for k, v in vit_s.state_dict().items()}
    save_file(state, str(d / "vit-s.safetensors"))
    torch.save(state, d / "vit-s.pt")
    marker = d / "PWNED"
    torch.save({"state_dict": Payload(marker)}, d / "evil.pt")
    with (d / "evil-raw.pt").open("wb") as fh:  # a plain pickle, not torch's zip format
        pickle.dump({"patch_embed.proj.weight": Payload(marker)}, fh)
    return {p.name: p for p in d.iterdir()} | {"marker": marker}


# ---- helpers -------------------------------------------------------------------------------------
def embed(capsys, slide: Path, out: Path, *extra: str, model: Path | None = None) -> tuple[int, str, str]:
    """``xmag embed SLIDE --out OUT [--model MODEL] EXTRA...`` in this process: (rc, stdout, stderr)."""
    argv = ["embed", str(slide), "--out", str(out), "--no-progress"]
    if "--model" not in extra:
        argv += ["--model", str(model)]
    rc = main([*argv, *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(rc: int, err: str) -> str:
    """The one ``xmag embed: error:`` line, last on stderr."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("xmag embed: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def assert_nothing_written(out: Path) -> None:
    """The output folder is absent or empty: no file, no hidden temporary."""
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [], sorted(out.iterdir())


# ---- slides through `xmag embed` -------------------------------------------------------------------
BAD_SLIDES = {
    "truncated.svs": ["the file is truncated", "image directory at byte 1275950 lies past its end"],
    "empty.svs": ["the file is empty (0 bytes)"],
    "png.svs": ["not a slide format OpenSlide recognises"],
    "text.svs": ["not a slide format OpenSlide recognises"],
    "unopenable.tiff": ["Unsupported TIFF compression"],
    "gray16.tif": ["not an RGB brightfield slide", "grayscale (1 channel of 16-bit samples)"],
    "gray8.tif": ["not an RGB brightfield slide", "grayscale (1 channel of 8-bit samples)"],
    "fluo5.tif": ["not an RGB brightfield slide", "multi-channel (5 channels of 8-bit samples)"],
    "rgb16.tif": ["not an RGB brightfield slide", "RGB (3 channels of 16-bit samples)"],
    "nores.tif": ["records no µm per pixel", "--mpp-override"],
    "small.svs": ["the slide is smaller than one patch", "16 x 16 px", "898 level-0 px", "finer --mpp"],
    "blank.svs": ["no 224 px patch at 2.0 µm/px holds 25% tissue", "tissue covers 0.0% of the slide"],
}


@pytest.mark.parametrize("name", sorted(BAD_SLIDES))
def test_bad_slide_is_one_line_exit_2_and_writes_nothing(name, files, model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    line = error_line(*embed(capsys, files[name], out, model=model_dir)[::2])
    assert name in line, line
    for cause in BAD_SLIDES[name]:
        assert cause in line, line
    if name == "small.svs":
        assert "holds" not in line and "tissue covers" not in line  # not the no-tissue message
    assert_nothing_written(out)


def test_missing_mpp_works_with_an_override(files, model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc, stdout, _ = embed(capsys, files["nores.tif"], out, "--mpp-override", "0.5", model=model_dir)
    assert rc == 0 and "nores.tif:" in stdout
    data = read_features(tmp_path / "out" / "nores.h5")
    assert len(data) > 0 and data.attrs["mpp_override"] == 0.5 and data.attrs["mpp_source"] == "override"


def test_too_small_is_its_own_error_and_threshold_zero_still_embeds(files, tmp_path) -> None:
    model = create_model("xmag", weights="random", tiny=True)
    with pytest.raises(SlideTooSmallError, match=r"small\.svs: the slide is smaller than one patch"):
        embed_slide(files["small.svs"], model, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path / "out")
    # asked for explicitly, every patch is kept: one padded patch
    result = embed_slide(files["small.svs"], model, tmp_path / "out", EmbedSettings(tissue_threshold=0),
                         progress=False)
    assert result.patches == 1
    # at 20x a 224 px patch is 112 µm: a 16 px (8 µm) slide is still smaller than one
    with pytest.raises(SlideTooSmallError, match=r"224 px patch at 0\.5 µm/px \(112 µm"):
        embed_slide(files["small.svs"], model, tmp_path / "out20", EmbedSettings(mpp="20x"), progress=False)


@pytest.mark.parametrize("name", ["CMU-1.tif", "CMU-1.txt"])
def test_a_real_slide_under_another_extension_embeds(name, files, model_dir, tmp_path, capsys) -> None:
    rc, stdout, _ = embed(capsys, files[name], tmp_path / "out", model=model_dir)
    assert rc == 0, stdout
    assert f"{name}: 4 patches" in stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CMU-1.h5"]
    # napari's probe goes by suffix first: a .tif slide is ours, a .txt is left to other readers
    assert get_reader(str(files[name])) is (read_slides if name.endswith(".tif") else None)


def test_non_ascii_paths(tmp_path, model_dir, capsys) -> None:
    folder = tmp_path / "スライド é"
    folder.mkdir()
    slide = folder / "CMU-1 ü.svs"
    shutil.copy(CMU1.path, slide)
    out = folder / "out ö"
    rc, stdout, err = embed(capsys, slide, out, model=model_dir)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["CMU-1 ü.h5"]
    assert "CMU-1 ü.svs: 4 patches" in stdout and str(out / "CMU-1 ü.h5") in stdout
    data = read_features(out / "CMU-1 ü.h5")
    assert data.attrs["slide_path"] == str(slide) and data.coords_attrs["name"] == "CMU-1 ü"
    [(_, kwargs, _)] = read_slides(str(slide))
    assert kwargs["name"] == "CMU-1 ü"


# ---- weights ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit-s.safetensors", "vit-s.pt"])
def test_weights_of_another_architecture(name, weight_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc, _, err = embed(capsys, CMU1.path, out, "--model", "xmag", "--weights", str(weight_files[name]))
    line = error_line(rc, err)
    assert f"{name} does not fit model 'xmag'" in line
    assert "shape mismatches" in line and "patch_embed.proj.weight: checkpoint (384, 3, 16, 16)" in line
    assert "(+" in line and len(line) < 1200  # a few examples, not every key
    assert_nothing_written(out)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("name", ["evil.pt", "evil-raw.pt"])
@pytest.mark.parametrize("how", ["weights", "model"])
def test_a_pickle_with_code_is_refused_unrun(name, how, weight_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    path = str(weight_files[name])
    args = ("--model", "xmag", "--weights", path) if how == "weights" else ("--model", path)
    rc, _, err = embed(capsys, CMU1.path, out, *args)
    line = error_line(rc, err)
    assert f"refused to read {path}" in line and "could run code" in line
    assert "weights_only` set to `False` will likely succeed" not in line  # torch's advice is not ours
    assert not weight_files["marker"].exists()
    assert_nothing_written(out)


# ---- the output folder -------------------------------------------------------------------------------
def _mount_tmpfs(where: Path, options: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


def test_read_only_output_fails_before_any_work(tmp_path, model_dir, capsys, monkeypatch) -> None:
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        import napari_xmag.models

        def no_model(*args, **kwargs):
            raise AssertionError("the model was built before the output folder was checked")

        monkeypatch.setattr(napari_xmag.models, "create_model", no_model)
        for out in (ro, ro / "new" / "out"):
            line = error_line(*embed(capsys, CMU1.path, out, model=model_dir)[::2])
            assert f"{out}: cannot write the output" in line and "read-only file system" in line
        assert sorted(ro.iterdir()) == []
    finally:
        _umount(ro)


def test_output_that_is_a_file(tmp_path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputError, match=r"out/sub: cannot write there: .*out is a file, not a folder"):
        check_output_folder(tmp_path / "out" / "sub")


def test_unwritable_output_as_an_unprivileged_user(model_dir) -> None:
    """A real process that drops root (root ignores permission bits) and finds the folder closed."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run as another user")
    base = Path(tempfile.mkdtemp(prefix="xmag-nobody-"))
    try:
        base.chmod(0o755)
        shutil.copytree(model_dir, base / "model")
        (base / "home").mkdir()
        os.chown(base / "home", 65534, 65534)
        closed = base / "closed"
        closed.mkdir(mode=0o555)
        closed.chmod(0o555)
        env = {**os.environ, "HOME": str(base / "home"), "XMAG_CACHE_DIR": str(base / "home" / "cache"),
               "HF_HOME": str(base / "home" / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*as_nobody, sys.executable, "-c", "import napari_xmag.cli"], env=env,
                               cwd=base, capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"the environment is not readable by an unprivileged user: {probe.stderr[-300:]}")
        for out in (closed, closed / "sub"):
            done = subprocess.run(
                [*as_nobody, sys.executable, "-m", "napari_xmag.cli", "embed", str(CMU1.path), "--model",
                 str(base / "model"), "--out", str(out), "--no-progress"],
                env=env, cwd=base, capture_output=True, text=True, timeout=300,
            )
            line = error_line(done.returncode, done.stderr)
            assert f"{out}: cannot write the output" in line and "not writable (permission denied)" in line
            assert done.stdout == ""
        assert sorted(closed.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_full_disk_says_so_and_leaves_nothing(tmp_path, model_dir, capsys) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=64k")
    try:
        out = disk / "out"
        # 4 KiB left: the arrays (4 patches x 32 floats) fit the estimate, the h5 file does not
        (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 4096))
        line = error_line(*embed(capsys, CMU1.path, out, model=model_dir)[::2])
        written = out / "CMU-1-Small-Region.h5"
        assert f"{written}: cannot write the features file: no space left on device" in line
        assert "nothing was written" in line
        assert_nothing_written(out)
        assert sorted(p.name for p in disk.iterdir()) in (["filler"], ["filler", "out"])
        # nothing left at all: refused before the forward pass, by the arrays' size alone
        (disk / "filler").unlink()
        (disk / "filler").write_bytes(b"\0" * shutil.disk_usage(disk).free)
        line = error_line(*embed(capsys, CMU1.path, out, model=model_dir)[::2])
        assert "not enough space left on the device for the features" in line and "0 bytes free" in line
        assert_nothing_written(out)
    finally:
        _umount(disk)


# ---- the napari reader -----------------------------------------------------------------------------
# name -> (does the probe claim it, what the error says)
READER_CASES = {
    "truncated.svs": (True, "the file is truncated"),
    "empty.svs": (True, "the file is empty (0 bytes)"),
    "unreadable.svs": (True, "Bogus marker length"),
    "unopenable.tiff": (True, "Unsupported TIFF compression"),
    "png.svs": (False, "not a slide format"),
    "text.svs": (False, "not a slide format"),
    "gray16.tif": (False, "not an RGB brightfield slide"),
    "fluo5.tif": (False, "not an RGB brightfield slide"),
}


@pytest.fixture(scope="module")
def viewer_model():
    """Napari's viewer model without a window: ``open`` goes through npe2 as the GUI does."""
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()
    return ViewerModel()


@pytest.mark.parametrize("name", sorted(READER_CASES))
def test_reader_on_bad_slides(name, files, viewer_model) -> None:
    from napari.utils.notifications import ErrorNotification

    claimed, cause = READER_CASES[name]
    path = str(files[name])
    assert get_reader(path) is (read_slides if claimed else None)
    with pytest.raises(SlideError) as err:
        read_slides(path)
    assert name in str(err.value) and cause in str(err.value)
    if claimed:  # what napari shows: the exception from opening it, as a notification
        with pytest.raises(SlideError) as opened:
            viewer_model.open(path, plugin="napari-xmag")
        message = ErrorNotification(opened.value).message
        assert name in message and cause in message
        assert len(viewer_model.layers) == 0


def test_slide_store_refuses_non_rgb_and_closes_its_handle(files) -> None:
    from napari_xmag.slide import open_slides

    before = len(open_slides())
    with pytest.raises(SlideOpenError, match=r"fluo5\.tif: not an RGB brightfield slide"):
        Slide(files["fluo5.tif"])
    assert len(open_slides()) == before
    with pytest.warns(MissingMppWarning), Slide(files["nores.tif"]) as slide:  # 8-bit RGB: fine
        assert slide.mpp is None
