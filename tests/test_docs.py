"""Docs that run: every bash and Python block of the README and docs/, page by page, in order.

Each page runs in a fresh workspace holding what the docs name (``slide.svs``, ``slides/``,
``slides.csv``, ``labels.csv``, ``features/``, a probe, an attention file, a comparison), with
the one documented switch ``XMAG_MODELS=tiny-random``: every model is built tiny with random
weights, so the commands run here exactly as written, offline and in seconds. A block passes
when it exits 0 and leaves what it says it makes: the ``--out`` of each ``xmag`` command, and
the paths of a ``<!-- docs-run: makes PATH ... -->`` line just above the block.

A block that cannot run here says why on the line above it, ``<!-- docs-run: skip (REASON) -->``
(a GPU, a SLURM cluster, a dask scheduler on another machine); the README's first two blocks
are the install and test commands that .ci/run runs itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cases import CMU1, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- docs-run: (skip|makes)\b\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")
RUNNABLE = {"bash": "bash", "python": "python"}
CI_RUNS = "run by .ci/run itself (the README's install-and-demo and test commands)"

# The workspace: slide.svs is the procedural sample slide (44 patches at 5x, enough for k = 8);
# the other names are copies of the real test slide.
SLIDE_NAMES = ("other-slide.svs", "CMU-1-Small-Region.svs", "CMU-1.svs")
CASES = tuple(f"case-{i:02d}" for i in range(1, 11))  # slides/ : two classes of five


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    makes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.page.name}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    """The fenced bash and python blocks of a page, with the docs-run line above each."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence or not fence.group(1):
            i += 1
            continue
        start, lang = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        i = end + 1
        if lang not in RUNNABLE:
            continue
        above = lines[start - 1].strip() if start else ""
        mark = MARK.match(above)
        block = Block(page, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n")
        if mark and mark.group(1) == "skip":
            block.skip = mark.group(2).strip("() ") or "(no reason given)"
        elif mark:
            block.makes = mark.group(2).split()
        blocks.append(block)
    if page.name == "README.md":
        for block in [b for b in blocks if b.lang == "bash"][:2]:
            block.skip = CI_RUNS
    return blocks


def outputs_named(block: Block) -> list[str]:
    """What a block says it makes: each xmag command's --out, and the makes line."""
    if block.lang != "bash":
        return list(block.makes)
    outs = []
    for command in re.sub(r"\\\n", " ", block.code).splitlines():
        words = shlex.split(command, comments=True)
        if words[:1] == ["xmag"] and "--out" in words:
            outs.append(words[words.index("--out") + 1])
    return outs + block.makes


def docs_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMAG_", "HF_"))}
    bin_dir = str(Path(sys.executable).parent)  # this environment's xmag and python first
    env.update(
        XMAG_MODELS="tiny-random",  # the documented switch (docs/models.md)
        HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"), XMAG_CACHE_DIR=str(home / "cache"),
        PATH=bin_dir + os.pathsep + env.get("PATH", ""), PYTHONUNBUFFERED="1",
    )
    return env


def run(block_or_cmd: Block | list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    if isinstance(block_or_cmd, list):
        argv = block_or_cmd
    elif block_or_cmd.lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block_or_cmd.code]
    else:
        script = cwd / f"_docs_{block_or_cmd.page.stem}_{block_or_cmd.line}.py"
        script.write_text(block_or_cmd.code)
        argv = [sys.executable, script.name]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def must(proc: subprocess.CompletedProcess, what: str) -> None:
    tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{tail}"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the docs name, built once with the commands the docs teach; copied for each page."""
    root = tmp_path_factory.mktemp("docs-workspace")
    env = docs_env(root)
    for name in SLIDE_NAMES:
        shutil.copyfile(CMU1.path, root / name)
    (root / "slides").mkdir()
    for case in CASES:
        shutil.copyfile(CMU1.path, root / "slides" / f"{case}.svs")
    (root / "slides.csv").write_text("slide\nslide.svs\nCMU-1.svs\n")
    (root / "more.txt").write_text("# a list of slides, one per line\nCMU-1-Small-Region.svs\n")
    labels = ["slide,label", *(f"{c}.svs,{'tumour' if i % 2 else 'normal'}" for i, c in enumerate(CASES))]
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    must(run([sys.executable, "-c", "from napari_xmag.synthetic import write_sample_slide;"
              "write_sample_slide('slide.svs')"], root, env), "the sample slide")
    slides = ["slide.svs", "other-slide.svs", *(f"slides/{c}.svs" for c in CASES)]
    must(run(["xmag", "embed", *slides, "--out", "features/", "--no-progress"], root, env), "embedding")
    must(run([sys.executable, "-c", SETUP], root, env), "the workspace's probe, attention and comparison")
    (root / "cache").mkdir(exist_ok=True)
    return root


# Made from the embedded features: a probe, a patch-label CSV, an attention file, a comparison.
SETUP = """
import numpy as np
from napari_xmag import maps
from napari_xmag.compare import compare_slide
from napari_xmag.features import read_features
from napari_xmag.formats.attention import AttentionMap, write_attention
from napari_xmag.models import create_model, save_model

rows = ["slide,x,y,label"]
for i in range(1, 11):
    for x, y in read_features(f"features/case-{i:02d}.h5").coords:
        rows.append(f"case-{i:02d}.svs,{x},{y},{'tumour' if (x + y + i) % 3 else 'normal'}")
open("patches.csv", "w").write("\\n".join(rows) + "\\n")
fs = read_features("features/slide.h5")
probe = maps.fit_linear_probe(fs.features, np.array(["tumour", "stroma"] * (len(fs) // 2)))
maps.save_probe(probe, "tumour.npz")
n = len(fs)
write_attention("eval/attention/slide.h5", AttentionMap(fs.coords, np.full(n, 1 / n), np.zeros(n), fs.attrs,
                                                        fs.coords_attrs))
save_model(create_model("xmag"), "exports/xmag-run3")  # a model folder, as xmag distill writes one
compare_slide("slide.svs", create_model("xmag"), create_model("uni2-h"), "cmp/slide",
              roi=(896, 1792, 1792, 896), progress=False)  # two 5x patches of tissue
"""


@pytest.mark.docs  # ~7 min: .ci/run runs these after the suite (pytest -m docs)
@pytest.mark.parametrize("page", [p for p in PAGES if page_blocks(p)], ids=lambda p: p.name)
def test_page_runs_as_written(page: Path, workspace: Path, tmp_path: Path) -> None:
    here = tmp_path / "work"
    shutil.copytree(workspace, here, symlinks=True)
    env = docs_env(tmp_path)
    for block in page_blocks(page):
        if block.skip:
            continue
        proc = run(block, here, env)
        must(proc, f"{block} ({block.lang})")
        for out in outputs_named(block):
            assert (here / out).exists(), f"{block}: says it makes {out}, which is not there"


def test_every_block_runs_or_says_why_not() -> None:
    """No block is skipped silently, and skips do not creep up (24 run, 9 skipped, each with why)."""
    blocks = [b for page in PAGES for b in page_blocks(page)]
    skipped = [b for b in blocks if b.skip]
    assert all(b.skip and b.skip != "(no reason given)" for b in skipped), [str(b) for b in skipped]
    ran = len(blocks) - len(skipped)
    assert ran >= 24 and len(skipped) <= 9, (ran, [f"{b}: {b.skip}" for b in skipped])
