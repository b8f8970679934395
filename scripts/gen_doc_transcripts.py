"""Rewrite the ``console`` transcripts of docs/performance.md from what the commands print now.

A transcript is a fenced ``console`` block whose first line is ``$ lorasize ...``; the command is
run and its output (from the line that starts the block's second part, ``Throughput`` or
``Speed``, when the block shows only a tail) replaces the block's. Blocks with a ``...`` line keep
their elision. ``tests/test_docs.py`` fails when a transcript is stale.

    python scripts/gen_doc_transcripts.py
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("docs/performance.md",)
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.M | re.S)


def run(command: str) -> str:
    from click.testing import CliRunner

    from lorasize.cli import cli

    args = shlex.split(command)[1:]  # drop "lorasize"
    result = CliRunner().invoke(cli, args, terminal_width=100)
    return result.output


def render_block(body: str) -> str:
    """Each ``$ command`` of the block (continuation lines joined) with what it prints now; a
    shown tail (``...`` then a line) keeps to the printed lines from that line's first word."""
    segments: list[tuple[list[str], list[str]]] = []
    for line in body.rstrip("\n").split("\n"):
        continued = segments and segments[-1][0] and segments[-1][0][-1].endswith("\\") \
            and not segments[-1][1]
        if line.startswith("$ ") or continued:
            if line.startswith("$ "):
                segments.append(([], []))
            segments[-1][0].append(line)
        elif segments:
            segments[-1][1].append(line)
    out = []
    for command_lines, shown in segments:
        command = " ".join(l.removeprefix("$ ").rstrip("\\").strip() for l in command_lines)
        printed = run(command).rstrip("\n").split("\n")
        shown = [l for l in shown if l.strip()]
        if shown and shown[0] == "...":
            word = shown[1].split()[0] if len(shown) > 1 and shown[1].split() else ""
            start = next((i for i, line in enumerate(printed)
                          if word and line.split()[:1] == [word]), 0)
            printed = ["..."] + printed[start:]
        out.append("\n".join(command_lines + printed))
    return "\n\n".join(out) + "\n"


def render(path: Path) -> str:
    text = path.read_text()
    return BLOCK.sub(lambda m: "```console\n" + render_block(m.group(1)) + "```"
                     if m.group(1).startswith("$ lorasize") else m.group(0), text)


def main() -> int:
    from lorasize.files import write_atomic

    for name in FILES:
        path = ROOT / name
        new = render(path)
        if new != path.read_text():
            write_atomic(path, new)
            print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
