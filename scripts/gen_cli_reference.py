"""Write docs/cli-reference.md from the argparse parser, so the reference cannot drift.

python scripts/gen_cli_reference.py          # rewrite the file
python scripts/gen_cli_reference.py --check  # exit 1 if it is out of date (tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_xmag.cli import build_parser

TARGET = Path(__file__).resolve().parents[1] / "docs" / "cli-reference.md"


def render() -> str:
    parser = build_parser()
    parts = [
        "# `xmag` command reference",
        "",
        "Generated from the parser by `scripts/gen_cli_reference.py`; do not edit by hand.",
        "",
        "```text",
        _help(parser).rstrip(),
        "```",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        parts += ["", f"## `xmag {name}`", "", "```text", _help(command).rstrip(), "```"]
    return "\n".join(parts) + "\n"


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    return parser.format_help()


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/gen_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
